"""One contract, every store: each behaviour here holds for MemoryStore, RedisStore on one Redis
and RedisStore on a Redis Cluster alike."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest

from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
)
from gateway.tenancy.limits import LEASE_MAX_S, LimitExceeded
from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.models import (
    Admission,
    KeyScope,
    Limits,
    MeteredLimits,
    Principal,
    UsageRecord,
)
from gateway.tenancy.store import Store
from tests.gateway.tenancy.conftest import CACHE_TTL_S

pytestmark = pytest.mark.anyio


class MakeStore:
    """Makes stores of one kind (``memory``, ``redis`` or ``cluster``) sharing one ledger."""

    def __init__(self, kind: str, url: str, prefix: str) -> None:
        self.kind, self.url, self.prefix = kind, url, prefix
        self.made: list[Store] = []
        self.skew = 0.0  # how far the in-process stores' clock runs ahead of the wall clock

    async def __call__(
        self, window_s: float = 60.0, defaults: Limits | None = None, lease_ttl_s: float = 10.0
    ) -> Store:
        store: Store
        if self.kind == "memory":
            store = MemoryStore(default_limits=defaults, limit_window_s=window_s,
                                clock=lambda: time.time() + self.skew)  # fmt: skip
        else:
            from gateway.tenancy.redis_store import RedisStore

            store = RedisStore(
                self.url,
                prefix=self.prefix,
                default_limits=defaults,
                limit_window_s=window_s,
                key_cache_ttl_s=CACHE_TTL_S,
                lease_ttl_s=lease_ttl_s,
            )
        self.made.append(store)
        return store

    async def replica(self, of: Store, lease_ttl_s: float = 10.0) -> Store:
        """Another gateway process on the same state (in one process: the store itself)."""
        return of if self.kind == "memory" else await self(lease_ttl_s=lease_ttl_s)

    async def kill(self, store: Store) -> None:
        """The replica dies without settling: its leases lapse (in one process: after the
        longest a request may hold one)."""
        if self.kind == "memory":
            self.skew += LEASE_MAX_S + 1
        else:
            await store.aclose()  # its heartbeat stops, as under kill -9


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
    if request.param == "cluster":  # started once, only when a cluster case runs
        redis_url = request.getfixturevalue("redis_cluster").url
    make = MakeStore(request.param, redis_url, unique_prefix)
    yield make
    for store in make.made:
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


# Per-key limits: a key's own limits, metered beside its tenant's in one atomic step.

CI_BOT = "key 'ci-bot'"


async def callers(
    store: Store, tenant: Limits, key: MeteredLimits, name: str | None = "ci-bot"
) -> tuple[Principal, Principal]:
    """A caller whose key has limits of its own, and a plain key's caller of the same tenant."""
    await store.create_tenant("acme", tenant)
    own = await store.create_key("acme", KeyScope(name, limits=key))
    plain = await store.create_key("acme")
    return await store.authenticate(own.secret), await store.authenticate(plain.secret)


async def refusal(
    store: Store, caller: Principal, tokens: int = 1, cost: float = 0.0
) -> GatewayError:
    with pytest.raises(GatewayError) as refused:
        await store.admit(caller, tokens=tokens, cost_usd=cost)
    return refused.value


async def test_a_keys_request_limit_refuses_it_alone_and_reserves_nothing(
    make_store: MakeStore,
) -> None:
    store = await make_store(window_s=1.0)
    key, plain = await callers(store, Limits(requests_per_minute=6),
                               MeteredLimits(requests_per_minute=2))  # fmt: skip
    first = await store.admit(key, tokens=1, cost_usd=0)
    await store.admit(key, tokens=1, cost_usd=0)
    for _ in range(3):
        refused = await refusal(store, key)
        assert isinstance(refused, LimitExceeded)
        assert (refused.limit, refused.key) == ("requests", CI_BOT)
        assert refused.message == "Rate limit reached for requests (key 'ci-bot')."
        assert refused.retry_after == pytest.approx(first.admitted_at + 1.0 - refused.at, abs=2e-3)
    # The three refusals reserved nothing at the tenant: four of its six are left.
    for _ in range(4):
        await store.admit(plain, tokens=1, cost_usd=0)
    refused = await refusal(store, plain)
    assert isinstance(refused, LimitExceeded) and refused.key is None
    assert refused.message == "Rate limit reached for requests."


async def test_a_keys_token_limit_refuses_it_alone_and_settles_at_both_levels(
    make_store: MakeStore,
) -> None:
    store = await make_store()
    key, plain = await callers(store, Limits(tokens_per_minute=1000),
                               MeteredLimits(tokens_per_minute=100))  # fmt: skip
    held = await store.admit(key, tokens=80, cost_usd=0)
    refused = await refusal(store, key, tokens=30)
    assert isinstance(refused, LimitExceeded)
    assert (refused.limit, refused.key) == ("tokens", CI_BOT) and 55 < refused.retry_after <= 60
    too_large = await refusal(store, key, tokens=101)
    assert isinstance(too_large, InvalidRequest) and too_large.param == "max_tokens"
    assert "the limit of key 'ci-bot' of 100 tokens" in too_large.message
    await store.settle(held, usage_for(held, prompt_tokens=10, completion_tokens=20))
    await store.admit(key, tokens=70, cost_usd=0)  # 30 actual + 70 reserved: the key is full
    assert isinstance(await refusal(store, key), LimitExceeded)
    # The tenant counts the same 100; the refused 30 and 101 were never reserved there.
    await store.admit(plain, tokens=900, cost_usd=0)
    refused = await refusal(store, plain)
    assert isinstance(refused, LimitExceeded) and (refused.limit, refused.key) == ("tokens", None)


async def test_a_keys_concurrency_is_held_at_both_levels_and_released_at_settlement(
    make_store: MakeStore,
) -> None:
    store = await make_store()
    key, plain = await callers(store, Limits(max_concurrent=3), MeteredLimits(max_concurrent=1))
    first = await store.admit(key, tokens=1, cost_usd=0)
    refused = await refusal(store, key)
    assert isinstance(refused, LimitExceeded)
    assert (refused.limit, refused.key) == ("concurrency", CI_BOT)
    others = [await store.admit(plain, tokens=1, cost_usd=0) for _ in range(2)]
    refused = await refusal(store, plain)  # 3 of 3: the key's one counts for its tenant
    assert isinstance(refused, LimitExceeded) and refused.key is None
    await store.settle(first, usage_for(first))
    second = await store.admit(key, tokens=1, cost_usd=0)  # released at both levels
    await store.settle(others[0], usage_for(others[0]))
    refused = await refusal(store, key)  # the key is full again, the tenant is not
    assert isinstance(refused, LimitExceeded) and refused.key == CI_BOT
    await store.settle(second, usage_for(second))
    await store.admit(key, tokens=1, cost_usd=0)


async def test_a_keys_budget_counts_its_spend_at_both_levels(make_store: MakeStore) -> None:
    store = await make_store()
    key, plain = await callers(store, Limits(monthly_budget_usd=0.02),
                               MeteredLimits(monthly_budget_usd=0.01))  # fmt: skip
    for _ in range(2):
        admission = await store.admit(key, tokens=1, cost_usd=0.006)
        await store.settle(admission, usage_for(admission, cost_usd=0.006))
        await store.settle(admission, usage_for(admission, cost_usd=0.006))  # once, not twice
    refused = await refusal(store, key)
    assert isinstance(refused, QuotaExceeded)
    assert refused.message == (
        "You exceeded your current quota: the monthly budget of key 'ci-bot' is spent."
    )
    # The tenant counted the key's $0.012: $0.008 is left of its $0.02, not $0.02.
    admission = await store.admit(plain, tokens=1, cost_usd=0.006)
    await store.settle(admission, usage_for(admission, cost_usd=0.006))
    admission = await store.admit(plain, tokens=1, cost_usd=0.006)
    await store.settle(admission, usage_for(admission, cost_usd=0.006))
    refused = await refusal(store, plain)
    assert isinstance(refused, QuotaExceeded) and "the tenant's monthly budget" in refused.message


async def test_the_tenants_limits_still_refuse_a_key_with_its_own_and_reserve_nothing_for_it(
    make_store: MakeStore,
) -> None:
    store = await make_store()
    key, plain = await callers(store, Limits(max_concurrent=2), MeteredLimits(max_concurrent=2))
    other = await store.admit(plain, tokens=1, cost_usd=0)
    await store.admit(key, tokens=1, cost_usd=0)
    for _ in range(3):
        refused = await refusal(store, key)  # the tenant's 2 of 2; the key holds 1 of 2
        assert isinstance(refused, LimitExceeded) and (refused.limit, refused.key) == (
            "concurrency", None
        )  # fmt: skip
    await store.settle(other, usage_for(other))
    await store.admit(key, tokens=1, cost_usd=0)  # the refusals reserved nothing at the key
    refused = await refusal(store, key)
    assert isinstance(refused, LimitExceeded) and refused.key == CI_BOT


async def test_when_both_levels_refuse_the_one_that_binds_longest_is_answered(
    make_store: MakeStore,
) -> None:
    store = await make_store()
    key, _ = await callers(store, Limits(max_concurrent=1, monthly_budget_usd=1.0),
                           MeteredLimits(requests_per_minute=1))  # fmt: skip
    held = await store.admit(key, tokens=1, cost_usd=0.5)
    refused = await refusal(store, key)
    # The tenant's concurrency would let it in within a second, the key's requests not for a
    # minute: retrying after a second would only be refused again.
    assert isinstance(refused, LimitExceeded)
    assert (refused.limit, refused.key) == ("requests", CI_BOT) and refused.retry_after > 55
    await store.settle(held, usage_for(held, cost_usd=1.0))
    refused = await refusal(store, key)  # and a spent budget outranks any rate limit
    assert isinstance(refused, QuotaExceeded) and "tenant's" in refused.message


async def test_a_lapsed_lease_gives_back_what_it_held_at_both_levels(
    make_store: MakeStore,
) -> None:
    holder = await make_store(lease_ttl_s=0.6)
    tenant = Limits(max_concurrent=2, tokens_per_minute=100, monthly_budget_usd=0.8)
    own = MeteredLimits(max_concurrent=2, tokens_per_minute=100, monthly_budget_usd=0.8)
    await holder.create_tenant("acme", tenant)
    issued = await holder.create_key("acme", KeyScope("ci-bot", limits=own))
    plain = await holder.create_key("acme")
    for _ in range(2):
        await holder.admit(await holder.authenticate(issued.secret), tokens=50, cost_usd=0.4)
    other = await make_store.replica(holder, lease_ttl_s=0.6)
    key = await other.authenticate(issued.secret)
    tenant_mate = await other.authenticate(plain.secret)
    assert isinstance(await refusal(other, key, tokens=50, cost=0.4), QuotaExceeded)
    assert isinstance(await refusal(other, tenant_mate, tokens=50, cost=0.4), QuotaExceeded)
    await make_store.kill(holder)  # dies holding both leases, their 100 tokens and $0.80

    async def admitted() -> bool:
        try:
            await other.admit(key, tokens=50, cost_usd=0.4)
        except (LimitExceeded, QuotaExceeded):
            return False
        return True

    # Redis has no signal for a lapsing lease: poll for 5 s at most, for each of the two (each
    # lapses a TTL after its own last renewal, which can fall on different heartbeats).
    for lease in ("first", "second"):
        for _ in range(100):
            if await admitted():
                break
            await anyio.sleep(0.05)
        else:
            pytest.fail(f"the dead replica's {lease} lease never lapsed")
    # Both came back at both levels: two were admitted.
    refused = await refusal(other, key, tokens=50, cost=0.4)
    assert isinstance(refused, QuotaExceeded)  # and both levels count the two new ones


async def test_a_keys_limits_are_listed_and_can_be_changed(make_store: MakeStore) -> None:
    store = await make_store()
    issued = await store.create_key("acme", KeyScope("ci-bot", limits=MeteredLimits(
        requests_per_minute=1)))  # fmt: skip
    await store.create_key("acme")
    key = await store.authenticate(issued.secret)
    await store.admit(key, tokens=1, cost_usd=0)
    assert isinstance(await refusal(store, key), LimitExceeded)
    shown = await store.get_key(issued.record.id)
    assert shown is not None and shown.scope.limits == MeteredLimits(requests_per_minute=1)
    changed = await store.update_key_limits(issued.record.id, MeteredLimits(max_concurrent=5))
    assert changed.scope == KeyScope("ci-bot", limits=MeteredLimits(max_concurrent=5))
    assert [k.scope.limits for k in await store.list_keys("acme")] == [
        MeteredLimits(max_concurrent=5), MeteredLimits()
    ]  # fmt: skip
    await anyio.sleep(CACHE_TTL_S + 0.05)  # replicas apply it within the key cache's TTL
    key = await store.authenticate(issued.secret)
    assert key.scope.limits == MeteredLimits(max_concurrent=5)
    await store.admit(key, tokens=1, cost_usd=0)  # no request limit any more
    assert await store.revoke_key(issued.record.id)
    with pytest.raises(NotFound):
        await store.update_key_limits(issued.record.id, MeteredLimits())
    with pytest.raises(NotFound):
        await store.update_key_limits("key_0123456789abcdef", MeteredLimits())
    assert await store.get_key("key_0123456789abcdef") is None


async def test_a_key_without_limits_of_its_own_is_metered_only_by_its_tenant(
    store: Store,
) -> None:
    caller = await principal(store, "acme", Limits(max_concurrent=1))
    admission = await store.admit(caller, tokens=1, cost_usd=0)
    assert not admission.key_metered
    refused = await refusal(store, caller)
    assert isinstance(refused, LimitExceeded) and refused.key is None
    await store.settle(admission, usage_for(admission))
    metered, _ = await callers(store, Limits(), MeteredLimits(max_concurrent=1), name=None)
    assert (await store.admit(metered, tokens=1, cost_usd=0)).key_metered
    refused = await refusal(store, metered)  # both levels full: on a tie, the key's is named
    assert isinstance(refused, LimitExceeded) and refused.key == f"key {metered.key_id}"


async def test_usage_groups_by_key_and_spreads_reconciliation_over_the_keys(
    store: Store,
) -> None:
    key, plain = await callers(store, Limits(), MeteredLimits())
    started = 1_750_000_000.0 - 1_750_000_000.0 % 60 + 10  # within one metering window
    for caller, cost in [(key, 0.003), (plain, 0.001), (key, 0.0)]:
        admission = await store.admit(caller, tokens=1, cost_usd=0)
        await store.settle(admission, usage_for(admission, cost_usd=cost, started_at=started))
    end = time.time() + 3600
    rows = await store.usage(tenant="acme", start=0, end=end, group_by=["key"])
    assert {r.group["key"]: (r.requests, r.cost_usd) for r in rows} == {
        key.key_id: (2, pytest.approx(0.003)), plain.key_id: (1, pytest.approx(0.001))
    }  # fmt: skip
    # Reconciliation books the window per tenant and model ($0.008 in all): each key's share
    # follows its provisional cost, and the shares add up to the whole exactly.
    window = int((started + 0.05) // 60)
    await store.windows.book_window("tpu", window, 60.0, {("acme", "gemma"): 8_000_000}, 0)
    rows = await store.usage(tenant="acme", start=0, end=end, group_by=["key", "model"])
    assert {r.group["key"]: r.cost_usd for r in rows} == {
        key.key_id: pytest.approx(0.006), plain.key_id: pytest.approx(0.002)
    }  # fmt: skip
    assert sum(r.cost_usd for r in rows) == pytest.approx(0.008, abs=1e-12)
    whole = await store.usage(tenant=None, start=0, end=end, group_by=["tenant"])
    assert [(r.group, r.requests, r.cost_usd) for r in whole] == [
        ({"tenant": "acme"}, 3, pytest.approx(0.008))
    ]
