"""One contract, every store: each behaviour here holds for MemoryStore, RedisStore on one Redis
and RedisStore on a Redis Cluster alike."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest

from gateway.errors import (
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
)
from gateway.tenancy.limits import LimitExceeded
from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.models import Admission, KeyScope, Limits, Principal, UsageRecord
from gateway.tenancy.store import Store
from tests.gateway.tenancy.conftest import CACHE_TTL_S

pytestmark = pytest.mark.anyio

MakeStore = Callable[..., Awaitable[Store]]


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
    ]
)
async def make_store(
    request: pytest.FixtureRequest, unique_prefix: str, redis_url: str
) -> AsyncIterator[MakeStore]:
    made: list[Store] = []
    if request.param == "cluster":  # started once, only when a cluster case runs
        redis_url = request.getfixturevalue("redis_cluster").url

    async def make(window_s: float = 60.0, defaults: Limits | None = None) -> Store:
        store: Store
        if request.param == "memory":
            store = MemoryStore(default_limits=defaults, limit_window_s=window_s)
        else:
            from gateway.tenancy.redis_store import RedisStore

            store = RedisStore(
                redis_url,
                prefix=unique_prefix,
                default_limits=defaults,
                limit_window_s=window_s,
                key_cache_ttl_s=CACHE_TTL_S,
            )
        made.append(store)
        return store

    yield make
    for store in made:
        if request.param != "memory":
            from gateway.tenancy.redis_store import RedisStore

            assert isinstance(store, RedisStore)
            await store.drop_everything()
        await store.aclose()


@pytest.fixture
async def store(make_store: MakeStore) -> Store:
    return await make_store()


def usage_for(admission: Admission, **overrides: object) -> UsageRecord:
    fields: dict[str, object] = {
        "request_id": admission.request_id,
        "tenant": admission.tenant,
        "key_id": admission.key_id,
        "model": "gemma",
        "backend": "tpu",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "cost_usd": 0.001,
        "status": 200,
        "started_at": admission.admitted_at,
        "duration_s": 0.05,
        "weighted_tokens": 21.25,
    }
    fields.update(overrides)
    return UsageRecord(**fields)  # type: ignore[arg-type]


async def principal(store: Store, tenant: str, limits: Limits) -> Principal:
    await store.create_tenant(tenant, limits)
    issued = await store.create_key(tenant)
    return await store.authenticate(issued.secret)


async def test_tenant_crud(store: Store) -> None:
    created = await store.create_tenant("acme", Limits(requests_per_minute=5, policy="cost"))
    assert created.limits.requests_per_minute == 5
    got = await store.get_tenant("acme")
    assert got is not None and got.limits == created.limits
    updated = await store.update_limits("acme", Limits(allowed_models=("gemma",)))
    assert updated.limits.allowed_models == ("gemma",)
    assert [t.id for t in await store.list_tenants()] == ["acme"]
    assert await store.delete_tenant("acme")
    assert not await store.delete_tenant("acme")
    assert await store.get_tenant("acme") is None
    with pytest.raises(NotFound):
        await store.update_limits("acme", Limits())


async def test_invalid_tenant_id_is_refused(store: Store) -> None:
    with pytest.raises(InvalidRequest):
        await store.create_tenant("Not Valid")


async def test_key_for_unknown_tenant_creates_it_with_defaults(make_store: MakeStore) -> None:
    store = await make_store(defaults=Limits(requests_per_minute=7))
    issued = await store.create_key("newco")
    assert issued.secret.startswith("tg-") and len(issued.secret) >= 3 + 22
    assert issued.record.prefix == issued.secret[: len(issued.record.prefix)]
    tenant = await store.get_tenant("newco")
    assert tenant is not None and tenant.limits.requests_per_minute == 7
    caller = await store.authenticate(issued.secret)
    assert caller.tenant.id == "newco" and caller.key_id == issued.record.id


async def test_keys_are_listed_without_secrets_and_revocation_works(make_store: MakeStore) -> None:
    store = await make_store()
    one = await store.create_key("acme")
    two = await store.create_key("beta")
    assert {k.id for k in await store.list_keys()} == {one.record.id, two.record.id}
    assert [k.id for k in await store.list_keys("acme")] == [one.record.id]
    assert await store.revoke_key(one.record.id)
    assert not await store.revoke_key(one.record.id)
    await anyio.sleep(CACHE_TTL_S + 0.05)  # replicas cache keys for up to the TTL, by design
    with pytest.raises(Unauthenticated):
        await store.authenticate(one.secret)
    assert (await store.authenticate(two.secret)).tenant.id == "beta"
    assert [k.revoked for k in await store.list_keys("acme")] == [True]


async def test_a_key_is_scoped_by_name_models_and_expiry(store: Store) -> None:
    await store.create_tenant("acme", Limits(allowed_models=("gemma", "llama")))
    scope = KeyScope("ci bot", time.time() + 0.5, ("gemma",))
    issued = await store.create_key("acme", scope)
    caller = await store.authenticate(issued.secret)
    assert caller.scope == scope and caller.key_id == issued.record.id
    assert caller.may_use("gemma") and not caller.may_use("llama")  # narrower than the tenant
    assert [k.scope for k in await store.list_keys("acme")] == [scope]
    plain = await store.authenticate((await store.create_key("acme")).secret)
    assert plain.may_use("llama") and not plain.may_use("other")  # the tenant's list holds
    await anyio.sleep(0.6)
    with pytest.raises(Unauthenticated):
        await store.authenticate(issued.secret)


async def test_unknown_and_malformed_keys_are_refused(store: Store) -> None:
    for secret in ["tg-" + "x" * 32, "nonsense", ""]:
        with pytest.raises(Unauthenticated):
            await store.authenticate(secret)


async def test_deleting_a_tenant_revokes_its_keys(make_store: MakeStore) -> None:
    store = await make_store()
    issued = await store.create_key("acme")
    await store.delete_tenant("acme")
    await anyio.sleep(CACHE_TTL_S + 0.05)
    with pytest.raises(Unauthenticated):
        await store.authenticate(issued.secret)


async def test_requests_per_window_is_exact(make_store: MakeStore) -> None:
    store = await make_store(window_s=1.0)
    caller = await principal(store, "acme", Limits(requests_per_minute=3))
    admitted = [await store.admit(caller, tokens=1, cost_usd=0) for _ in range(3)]
    with pytest.raises(LimitExceeded) as refused:
        await store.admit(caller, tokens=1, cost_usd=0)
    assert refused.value.limit == "requests"
    # The oldest of the three leaves the window exactly when retry_after says.
    expected = admitted[0].admitted_at + 1.0 - refused.value.at
    assert refused.value.retry_after == pytest.approx(expected, abs=2e-3)
    assert 0 < refused.value.retry_after <= 1.0
    await anyio.sleep(refused.value.retry_after + 0.01)
    await store.admit(caller, tokens=1, cost_usd=0)


async def test_tokens_reserve_then_settle_to_actuals(make_store: MakeStore) -> None:
    store = await make_store()
    caller = await principal(store, "acme", Limits(tokens_per_minute=1000))
    big = await store.admit(caller, tokens=900, cost_usd=0)
    with pytest.raises(RateLimited):
        await store.admit(caller, tokens=200, cost_usd=0)
    await store.settle(big, usage_for(big, prompt_tokens=50, completion_tokens=50))
    # 100 actual tokens now count instead of the 900 reserved.
    await store.admit(caller, tokens=900, cost_usd=0)
    with pytest.raises(LimitExceeded) as refused:
        await store.admit(caller, tokens=1, cost_usd=0)
    assert refused.value.limit == "tokens"
    assert 55 < refused.value.retry_after <= 60


async def test_a_request_larger_than_the_token_limit_is_invalid(store: Store) -> None:
    caller = await principal(store, "acme", Limits(tokens_per_minute=100))
    with pytest.raises(InvalidRequest):
        await store.admit(caller, tokens=101, cost_usd=0)


async def test_concurrency_is_released_at_settlement(store: Store) -> None:
    caller = await principal(store, "acme", Limits(max_concurrent=2))
    first = await store.admit(caller, tokens=1, cost_usd=0)
    await store.admit(caller, tokens=1, cost_usd=0)
    with pytest.raises(LimitExceeded) as refused:
        await store.admit(caller, tokens=1, cost_usd=0)
    assert refused.value.limit == "concurrency"
    await store.settle(first, usage_for(first))
    await store.admit(caller, tokens=1, cost_usd=0)


async def test_budget_stops_with_at_most_one_request_of_overshoot(store: Store) -> None:
    caller = await principal(store, "acme", Limits(monthly_budget_usd=0.01))
    spent = 0.0
    for _ in range(20):
        try:
            admission = await store.admit(caller, tokens=1, cost_usd=0.004)
        except QuotaExceeded:
            break
        await store.settle(admission, usage_for(admission, cost_usd=0.003))
        spent += 0.003
    assert 0.01 <= spent <= 0.01 + 0.004
    with pytest.raises(QuotaExceeded):
        await store.admit(caller, tokens=1, cost_usd=0.0)


async def test_budget_counts_reservations_in_flight(store: Store) -> None:
    caller = await principal(store, "acme", Limits(monthly_budget_usd=0.01))
    await store.admit(caller, tokens=1, cost_usd=0.006)
    await store.admit(caller, tokens=1, cost_usd=0.006)
    with pytest.raises(QuotaExceeded):
        await store.admit(caller, tokens=1, cost_usd=0.001)


async def test_settle_is_exactly_once(store: Store) -> None:
    caller = await principal(store, "acme", Limits())
    admission = await store.admit(caller, tokens=30, cost_usd=0.01)
    record = usage_for(admission, client_request_id="client-1")
    await store.settle(admission, record)
    await store.settle(admission, record)
    kept = await store.record("acme", admission.request_id)
    assert kept is not None and kept.client_request_id == "client-1"
    assert kept.completion_tokens == 20 and kept.cost_usd == pytest.approx(0.001)
    rows = await store.usage(tenant="acme", start=0, end=time.time() + 3600, group_by=["model"])
    assert [(r.group, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [
        ({"model": "gemma"}, 1, 10, 20)
    ]


async def test_a_reused_client_request_id_never_erases_a_bill(store: Store) -> None:
    caller = await principal(store, "acme", Limits())
    for _ in range(2):
        admission = await store.admit(caller, tokens=1, cost_usd=0)
        await store.settle(admission, usage_for(admission, client_request_id="same"))
    rows = await store.usage(tenant="acme", start=0, end=time.time() + 3600, group_by=[])
    assert rows[0].requests == 2


async def test_usage_groups_and_scopes_by_tenant(store: Store) -> None:
    for tenant, backend in [("acme", "tpu"), ("acme", "gpu"), ("beta", "tpu")]:
        caller = await principal(store, tenant, Limits())
        admission = await store.admit(caller, tokens=1, cost_usd=0)
        await store.settle(admission, usage_for(admission, backend=backend, cost_usd=0.002))
    end = time.time() + 3600
    rows = await store.usage(tenant=None, start=0, end=end, group_by=["tenant", "backend"])
    assert [(r.group["tenant"], r.group["backend"], r.requests) for r in rows] == [
        ("acme", "gpu", 1),
        ("acme", "tpu", 1),
        ("beta", "tpu", 1),
    ]
    mine = await store.usage(tenant="beta", start=0, end=end, group_by=["day"])
    assert len(mine) == 1 and mine[0].completion_tokens == 20
    assert mine[0].tokens_per_dollar == pytest.approx(20 / 0.002)
    assert await store.usage(tenant="acme", start=0, end=1000, group_by=[]) == []
    with pytest.raises(InvalidRequest):
        await store.usage(tenant=None, start=0, end=end, group_by=["colour"])
