"""Cost model and window reconciliation on the in-process store, with a hand-moved clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.metering.service import CostMeter
from gateway.metering.windows import allocate
from gateway.settings import BackendSettings, MeteringSettings, Price
from gateway.tenancy.ledger import IDLE, Share
from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.models import Limits, UsageRecord
from tests.gateway.metering.conftest import T0, Clock

pytestmark = pytest.mark.anyio
W = 60.0


def backends() -> list[BackendSettings]:
    return [
        BackendSettings(
            name="tpu", kind="jetstream", url="http://x", models={"gemma": "g"},
            price=Price(usd_per_hour=3.6),
        ),
        BackendSettings(
            name="api", kind="vllm", url="http://y", models={"gemma": "g"},
            price=Price(usd_per_mtok_input=1.0, usd_per_mtok_output=4.0),
        ),
    ]  # fmt: skip


def make(clock: Clock) -> tuple[MemoryStore, CostMeter]:
    store = MemoryStore(limit_window_s=W, metering_window_s=W, clock=clock)
    meter = CostMeter(MeteringSettings(window_s=W, prefill_weight=0.125), backends(), store,
                      clock=clock)  # fmt: skip
    return store, meter


async def serve(
    store: MemoryStore, meter: CostMeter, tenant: str, backend: str, prompt: int, out: int
) -> None:
    await store.create_tenant(tenant, Limits())
    issued = await store.create_key(tenant)
    caller = await store.authenticate(issued.secret)
    admission = await store.admit(caller, tokens=prompt + out, cost_usd=0.0)
    meter.observe(backend, prompt, out)
    await store.settle(
        admission,
        UsageRecord(
            request_id="", tenant=tenant, key_id=caller.key_id, model="gemma", backend=backend,
            prompt_tokens=prompt, completion_tokens=out,
            cost_usd=meter.provisional_cost(backend, prompt, out), status=200,
            started_at=admission.admitted_at, duration_s=0.0,
            weighted_tokens=meter.weighted_tokens(prompt, out),
        ),
    )  # fmt: skip


def test_per_token_prices_are_exact() -> None:
    _, meter = make(Clock())
    assert meter.provisional_cost("api", 1000, 500) == pytest.approx(0.001 + 0.002)
    assert meter.worst_case_cost(["api", "tpu"], 1000, 2000) >= meter.provisional_cost(
        "api", 1000, 2000
    )


def test_hourly_provisional_cost_starts_from_the_capacity_prior() -> None:
    _, meter = make(Clock())
    # $3.6/h over 1000 output tokens/s is $1e-6 per weighted token.
    assert meter.provisional_cost("tpu", 800, 100) == pytest.approx(200 * 1e-6)


@given(
    cost=st.integers(0, 10**12),
    weights=st.lists(st.floats(0.01, 1e6, allow_nan=False), min_size=1, max_size=20),
)
def test_allocation_adds_up_exactly(cost: int, weights: list[float]) -> None:
    shares = {(f"t{i}", "m"): Share(w, 0) for i, w in enumerate(weights)}
    parts = allocate(cost, shares)
    assert sum(parts.values()) == cost
    assert all(p >= 0 for p in parts.values())


async def test_closed_windows_reconcile_to_the_instance_cost() -> None:
    clock = Clock()
    store, meter = make(clock)
    clock.now = T0 + 10
    await serve(store, meter, "acme", "tpu", 800, 300)
    await serve(store, meter, "beta", "tpu", 80, 100)
    await serve(store, meter, "acme", "api", 1000, 500)
    clock.now = T0 + 2 * W  # window 0 is now reconcilable
    await meter.tick()
    rows = await store.usage(tenant=None, start=T0, end=T0 + 3600, group_by=["tenant", "backend"])
    tpu = {r.group["tenant"]: r.cost_usd for r in rows if r.group["backend"] == "tpu"}
    assert sum(tpu.values()) == pytest.approx(3.6 * W / 3600, abs=1e-9)
    assert tpu["acme"] / tpu["beta"] == pytest.approx(400 / 110, rel=1e-6)
    api = [r.cost_usd for r in rows if r.group["backend"] == "api"]
    assert api == [pytest.approx(0.003)]


async def test_idle_windows_are_booked_as_idle_cost() -> None:
    clock = Clock()
    store, meter = make(clock)
    clock.now = T0 + 3 * W
    await meter.tick()  # first pass books the newest closed window only
    clock.now = T0 + 5 * W
    await meter.tick()
    rows = await store.usage(tenant=None, start=T0, end=T0 + 3600, group_by=["tenant"])
    assert [r.group["tenant"] for r in rows] == [IDLE]
    assert rows[0].cost_usd == pytest.approx(3 * 3.6 * W / 3600, abs=1e-9)
    assert await store.usage(tenant="acme", start=T0, end=T0 + 3600, group_by=[]) == []


async def test_a_late_record_reopens_its_window() -> None:
    clock = Clock()
    store, meter = make(clock)
    clock.now = T0 + 2 * W
    await meter.tick()  # window 0 booked idle
    clock.now = T0 + 10
    await serve(store, meter, "acme", "tpu", 0, 100)  # settled as if replayed from a spool
    clock.now = T0 + 2 * W + 1
    await meter.tick()
    rows = await store.usage(tenant=None, start=T0, end=T0 + 3600, group_by=["tenant"])
    assert [r.group["tenant"] for r in rows] == ["acme"]
    assert rows[0].cost_usd == pytest.approx(3.6 * W / 3600, abs=1e-9)


async def test_live_rate_and_realised_cost_follow_measured_throughput() -> None:
    clock = Clock()
    store, meter = make(clock)
    clock.now = T0 + 10
    await serve(store, meter, "acme", "tpu", 0, 6000)
    clock.now = T0 + W + 1
    await meter.tick()
    # One busy window: $0.06 over 6000 weighted tokens.
    assert meter.prices.rate("tpu") == pytest.approx(0.06 / 6000)
    found = {e.backend: e for e in await meter.efficiency(windows=2)}
    assert found["tpu"].usd_per_mtok_output == pytest.approx(2 * 0.06 / 6000 * 1e6)
    assert found["api"].usd_per_mtok_output is None
