"""The idle row of instance time nobody used, as operators read it from ``GET /admin/usage``."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from gateway.admin.routes import admin_router, usage_router
from gateway.metering.service import CostMeter
from gateway.settings import BackendSettings, MeteringSettings, PoolSettings, Price
from gateway.tenancy.ledger import IDLE
from gateway.tenancy.models import Limits, UsageRecord
from tests.gateway.metering.conftest import T0, Clock, Replicas

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]
ADMIN = {"Authorization": "Bearer tg-admin-test"}
W = 60.0


async def test_idle_instance_time_shows_in_admin_usage_but_not_in_a_tenants_own(
    replicas: Replicas, clock: Clock
) -> None:
    store = replicas(W)
    backend = BackendSettings(
        name="tpu", kind="jetstream", url="http://x", models={"gemma": "g"},
        price=Price(usd_per_hour=3.6), pool=PoolSettings(billing="reserved", instances=2),
    )  # fmt: skip
    meter = CostMeter(MeteringSettings(window_s=W), [backend], store, clock=clock)
    app = FastAPI()
    app.state.tollgate = SimpleNamespace(store=store, admin_key="tg-admin-test", meter=meter)
    app.include_router(admin_router)
    app.include_router(usage_router)

    await store.create_tenant("acme", Limits())
    issued = await store.create_key("acme")
    caller = await store.authenticate(issued.secret)
    clock.now = T0 + 10
    await meter.tick()
    admission = await store.admit(caller, tokens=100, cost_usd=0.0)
    meter.observe("tpu", 0, 100)
    record = UsageRecord(
        request_id="", tenant="acme", key_id=caller.key_id, model="gemma", backend="tpu",
        prompt_tokens=0, completion_tokens=100, cost_usd=meter.provisional_cost("tpu", 0, 100),
        status=200, started_at=clock.now, duration_s=0.0, weighted_tokens=100.0,
    )  # fmt: skip
    await store.settle(admission, record)
    for t in (T0 + W, T0 + 2 * W, T0 + 3 * W):  # window 0 busy, window 1 idle
        clock.now = t
        await meter.tick()

    span = {"from": str(T0), "to": str(T0 + 3600)}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        admin = await http.get("/admin/usage", headers=ADMIN, params=span)
        by_key = await http.get("/admin/usage", headers=ADMIN,
                                params={**span, "group_by": "tenant,key"})  # fmt: skip
        own = await http.get(
            "/v1/usage", headers={"Authorization": f"Bearer {issued.secret}"}, params=span
        )
    rows = {r["tenant"]: r for r in admin.json()["data"]}
    # Two reserved instances at $3.6/h: $0.12 a window, window 0 to acme, window 1 idle.
    assert rows[IDLE] == {
        "tenant": IDLE, "backend": "tpu", "model": IDLE, "requests": 0, "prompt_tokens": 0,
        "completion_tokens": 0, "total_tokens": 0, "cost_usd": 0.12, "tokens_per_dollar": 0.0,
    }  # fmt: skip
    assert rows["acme"]["cost_usd"] == 0.12
    # By key: the idle row keeps its label, and the key's row carries the reconciled cost.
    assert [(r["tenant"], r["key"], r["key_name"], r["cost_usd"]) for r in by_key.json()["data"]
            ] == [(IDLE, IDLE, None, 0.12), ("acme", caller.key_id, None, 0.12)]  # fmt: skip
    # The realised figure covers the last 60 windows: those before the gateway watched the fleet
    # are billed at config's two instances too.
    assert admin.json()["backends"][0]["cost_usd"] == pytest.approx(60 * 0.12)
    assert [r["model"] for r in own.json()["data"]] == ["gemma"]
    assert own.json()["data"][0]["cost_usd"] == 0.12
