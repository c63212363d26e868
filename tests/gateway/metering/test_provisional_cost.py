"""The provisional cost a response carries: never one lone request's whole window."""

from __future__ import annotations

import pytest

from gateway.metering.service import CostMeter
from gateway.settings import BackendSettings, MeteringSettings, Price
from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.models import Limits, UsageRecord
from tests.gateway.metering.conftest import T0, Clock

pytestmark = pytest.mark.anyio
W = 60.0
USD_PER_HOUR = 1.0
WINDOW_USD = USD_PER_HOUR * W / 3600


def _meter(clock: Clock) -> tuple[MemoryStore, CostMeter]:
    backend = BackendSettings(
        name="js", kind="jetstream", url="grpc://x", models={"gemma": "g"},
        price=Price(usd_per_hour=USD_PER_HOUR),
    )  # fmt: skip
    store = MemoryStore(limit_window_s=W, metering_window_s=W, clock=clock)
    meter = CostMeter(MeteringSettings(window_s=W), [backend], store, clock=clock)
    return store, meter


async def _serve(store: MemoryStore, meter: CostMeter, prompt: int, out: int) -> float:
    await store.create_tenant("acme", Limits())
    caller = await store.authenticate((await store.create_key("acme")).secret)
    admission = await store.admit(caller, tokens=prompt + out, cost_usd=0.0)
    cost = meter.provisional_cost("js", prompt, out)
    meter.observe("js", prompt, out)
    await store.settle(
        admission,
        UsageRecord(
            request_id="", tenant="acme", key_id=caller.key_id, model="gemma", backend="js",
            prompt_tokens=prompt, completion_tokens=out, cost_usd=cost, status=200,
            started_at=admission.admitted_at, duration_s=0.0,
            weighted_tokens=meter.weighted_tokens(prompt, out),
        ),
    )  # fmt: skip
    return cost


async def test_a_request_after_a_lone_small_one_is_not_priced_at_a_whole_window() -> None:
    clock = Clock()
    store, meter = _meter(clock)
    prior = meter.provisional_cost("js", 0, 5)
    clock.now = T0 + 10
    await _serve(store, meter, 0, 5)  # alone in its window: that window's rate is huge
    clock.now = T0 + W + 1
    await meter.tick()
    clock.now = T0 + W + 10
    cost = await _serve(store, meter, 0, 5)
    assert cost == pytest.approx(prior)  # the issue saw exactly WINDOW_USD
