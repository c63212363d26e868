"""Reconciled cost is instance-time x price, on both stores: several instances, a scaling pool,
replicas that watch the same fleet, and tenants sharing a window by weighted tokens."""

from __future__ import annotations

import pytest

from gateway.metering.service import CostMeter
from gateway.settings import BackendSettings, MeteringSettings, PoolSettings, Price
from gateway.tenancy.ledger import IDLE
from gateway.tenancy.models import Admission, Limits, UsageRecord
from gateway.tenancy.store import Store
from tests.gateway.metering.conftest import T0, Clock, Replicas

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]
USD_PER_HOUR = 3.6
HOUR = 3600.0  # a window of an hour: usage grouped by hour then reads window by window


def nano(instances: float, seconds: float) -> int:
    """What ``instances`` instances cost for ``seconds``, in nano-dollars."""
    return round(instances * seconds * USD_PER_HOUR / 3600 * 1e9)


def tpu(pool: PoolSettings | None = None) -> list[BackendSettings]:
    return [
        BackendSettings(
            name="tpu", kind="jetstream", url="http://x", models={"gemma": "g"},
            price=Price(usd_per_hour=USD_PER_HOUR), pool=pool or PoolSettings(),
        )
    ]  # fmt: skip


class Fleet:
    """How many instances the router says are billed now: the test scales it by hand."""

    def __init__(self, instances: float | None) -> None:
        self.instances = instances

    def __call__(self, name: str) -> float | None:
        assert name == "tpu"
        return self.instances


def meter(
    store: Store,
    clock: Clock,
    window_s: float,
    fleet: Fleet | None,
    pool: PoolSettings | None = None,
) -> CostMeter:
    settings = MeteringSettings(window_s=window_s, prefill_weight=0.125)
    return CostMeter(settings, tpu(pool), store, clock=clock, instances=fleet)


async def serve(
    store: Store, gateway: CostMeter, clock: Clock, tenant: str, prompt: int, out: int
) -> Admission:
    """One generation on ``tpu`` that completes now, metered as serving meters it."""
    await store.create_tenant(tenant, Limits())
    caller = await store.authenticate((await store.create_key(tenant)).secret)
    admission = await store.admit(caller, tokens=prompt + out, cost_usd=0.0)
    gateway.observe("tpu", prompt, out)
    await store.settle(
        admission,
        UsageRecord(
            request_id="", tenant=tenant, key_id=caller.key_id, model="gemma", backend="tpu",
            prompt_tokens=prompt, completion_tokens=out,
            cost_usd=gateway.provisional_cost("tpu", prompt, out), status=200,
            started_at=clock.now, duration_s=0.0,
            weighted_tokens=gateway.weighted_tokens(prompt, out),
        ),
    )  # fmt: skip
    return admission


async def at(clock: Clock, t: float, *meters: CostMeter) -> None:
    clock.now = t
    for m in meters:
        await m.tick()


async def billed(store: Store, start: float, end: float) -> dict[str, int]:
    """Reconciled nano-dollars per tenant (idle row included) of [start, end)."""
    rows = await store.usage(tenant=None, start=start, end=end, group_by=["tenant"])
    return {r.group["tenant"]: round(r.cost_usd * 1e9) for r in rows}


async def test_two_instances_behind_one_backend_bill_twice_the_window(
    replicas: Replicas, clock: Clock
) -> None:
    w = 60.0
    store = replicas(w)
    gateway = meter(store, clock, w, Fleet(2))
    await at(clock, T0 + 5, gateway)
    clock.now = T0 + 10
    await serve(store, gateway, clock, "acme", 800, 300)  # 400 weighted tokens
    await serve(store, gateway, clock, "beta", 80, 100)  # 110 weighted tokens
    await at(clock, T0 + w, gateway)
    await at(clock, T0 + 2 * w, gateway)  # window 0 is reconciled
    cost = await billed(store, T0, T0 + HOUR)
    assert sum(cost.values()) == nano(2, w) == 120_000_000
    # Largest remainders: 400/510 and 110/510 of the window, to the nano-dollar.
    assert cost == {"acme": 94_117_647, "beta": 25_882_353}
    rows = await store.usage(tenant=None, start=T0, end=T0 + HOUR, group_by=["tenant"])
    per_dollar = {r.group["tenant"]: r.tokens_per_dollar for r in rows}
    assert per_dollar["acme"] == pytest.approx(300 / 0.094_117_647, rel=1e-9)
    assert per_dollar["beta"] == pytest.approx(100 / 0.025_882_353, rel=1e-9)


@pytest.mark.parametrize(
    ("pool", "instances"),
    [
        (PoolSettings(billing="reserved", instances=2), 2),
        (PoolSettings(billing="elastic", min_instances=1, max_instances=4), 1),
        (PoolSettings(billing="elastic", min_instances=0, max_instances=4), 0),
    ],
)
async def test_a_window_nobody_observed_is_billed_from_config(
    replicas: Replicas, clock: Clock, pool: PoolSettings, instances: int
) -> None:
    w = 60.0
    store = replicas(w)
    gateway = meter(store, clock, w, None, pool)
    await at(clock, T0 + 2 * w, gateway)  # first look at the fleet: window 0 went unobserved
    expected = {IDLE: nano(instances, w)} if instances else {}
    assert await billed(store, T0, T0 + HOUR) == expected


async def test_an_elastic_pool_is_billed_the_instance_time_it_had_up(
    replicas: Replicas, clock: Clock
) -> None:
    store = replicas(HOUR)
    fleet = Fleet(1)
    pool = PoolSettings(billing="elastic", min_instances=0, max_instances=3)
    gateway = meter(store, clock, HOUR, fleet, pool)
    await at(clock, T0, gateway)
    clock.now = T0 + 10
    await serve(store, gateway, clock, "acme", 0, 500)
    fleet.instances = 3  # scales up at the start of window 1...
    await at(clock, T0 + HOUR, gateway)
    clock.now = T0 + HOUR + 10
    await serve(store, gateway, clock, "acme", 0, 300)
    await serve(store, gateway, clock, "beta", 0, 100)
    fleet.instances = 0  # ...and to zero at the start of window 2
    for n in range(2, 5):
        await at(clock, T0 + n * HOUR, gateway)  # each tick reconciles one more window
    assert await billed(store, T0, T0 + HOUR) == {"acme": nano(1, HOUR)}
    window_1 = await billed(store, T0 + HOUR, T0 + 2 * HOUR)
    assert window_1 == {"acme": nano(3, HOUR) * 3 // 4, "beta": nano(3, HOUR) // 4}
    assert await billed(store, T0 + 2 * HOUR, T0 + 3 * HOUR) == {}  # scaled to zero: nothing
    # The fleet's bill the dashboards show (tollgate.backend.instance_cost) is the same
    # instance-time: one instance for an hour, three for the next, none after.
    assert gateway.instance_usd() == {"tpu": pytest.approx(nano(4, HOUR) / 1e9)}


async def test_replicas_watching_the_same_instances_do_not_double_the_bill(
    replicas: Replicas, clock: Clock
) -> None:
    w = 60.0
    fleet = Fleet(2)
    stores = [replicas(w), replicas(w)]
    first, second = (meter(store, clock, w, fleet) for store in stores)
    await at(clock, T0 + 1, first)
    await at(clock, T0 + 20, second)  # a replica that starts later sees the same two instances
    await serve(stores[0], first, clock, "acme", 0, 200)
    await at(clock, T0 + 30, first, second)
    await serve(stores[1], second, clock, "beta", 0, 200)
    await at(clock, T0 + w, first, second)
    await at(clock, T0 + 2 * w, second, first)
    assert await billed(stores[0], T0, T0 + HOUR) == {"acme": nano(1, w), "beta": nano(1, w)}
    totals = await stores[1].windows.window_totals("tpu", [int(T0 // w)])
    assert totals[int(T0 // w)].completion_tokens == 400  # tokens still add up over replicas


async def test_a_replica_restarting_mid_window_still_bills_the_whole_window(
    replicas: Replicas, clock: Clock
) -> None:
    w = 60.0
    store = replicas(w)
    fleet = Fleet(2)
    old = meter(store, clock, w, fleet)
    await at(clock, T0 + 20, old)
    clock.now = T0 + 25
    await old.aclose()  # stops watching: the instances stay up and billed
    new = meter(store, clock, w, fleet)
    await at(clock, T0 + w + 40, new)
    await at(clock, T0 + 2 * w, new)
    await at(clock, T0 + 3 * w, new)
    assert await billed(store, T0, T0 + HOUR) == {IDLE: 2 * nano(2, w)}


async def test_provisional_and_reconciled_cost_agree_on_a_steady_load(
    replicas: Replicas, clock: Clock
) -> None:
    store = replicas(HOUR)
    gateway = meter(store, clock, HOUR, Fleet(2))
    await at(clock, T0, gateway)
    provisional = []
    for window in range(3):
        clock.now = T0 + window * HOUR + 10
        for tenant in ("acme", "beta"):
            admission = await serve(store, gateway, clock, tenant, 400, 600)
            record = await store.record(admission.tenant, admission.request_id)
            assert record is not None
            provisional.append((window, record.cost_usd))
        await at(clock, T0 + (window + 1) * HOUR, gateway)
    await at(clock, T0 + 4 * HOUR, gateway)
    # Window 0 was priced from the prior; later ones from the live rate of the windows before.
    for window in (1, 2):
        start = T0 + window * HOUR
        reconciled = sum((await billed(store, start, start + HOUR)).values()) / 1e9
        assert reconciled == pytest.approx(nano(2, HOUR) / 1e9)
        assert sum(c for w, c in provisional if w == window) == pytest.approx(reconciled, rel=1e-9)
    # The realised figure counts every window's instance-time, the idle window 3 included.
    found = {e.backend: e for e in await gateway.efficiency(windows=4)}
    assert found["tpu"].cost_usd == pytest.approx(4 * nano(2, HOUR) / 1e9)
    assert found["tpu"].output_tokens == 3 * 1200
