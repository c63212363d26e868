"""Leases live seconds unless renewed, and checkpoints bill a dead replica's usage exactly once.

Two ``RedisStore`` objects on one Redis (and on one Redis Cluster) play two replicas; a replica
"dies" when its store is closed without settling (its heartbeat stops, as under ``kill -9``; the
multi-process version is ``tests/e2e/test_replica_death.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.errors import QuotaExceeded
from gateway.tenancy.limits import LimitExceeded
from gateway.tenancy.models import (
    Admission,
    KeyScope,
    Limits,
    MeteredLimits,
    Principal,
    UsageRecord,
)
from gateway.tenancy.redis_store import RedisStore
from tests.gateway.tenancy.conftest import REDIS_URL

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(30)]
TTL_S = 0.6  # lease_ttl_s: heartbeats every 0.2 s


@pytest.fixture(params=["redis", "cluster"])
async def replicas(
    request: pytest.FixtureRequest, unique_prefix: str
) -> AsyncIterator[Callable[[], RedisStore]]:
    made: list[RedisStore] = []
    url = request.getfixturevalue("redis_cluster").url if request.param == "cluster" else REDIS_URL

    def make() -> RedisStore:
        store = RedisStore(url, prefix=unique_prefix, lease_ttl_s=TTL_S)
        made.append(store)
        return store

    yield make
    await made[0].drop_everything()
    for store in made:
        await store.aclose()


async def _principal(store: RedisStore, tenant: str, limits: Limits) -> Principal:
    await store.create_tenant(tenant, limits)
    return await store.authenticate((await store.create_key(tenant)).secret)


def _usage(admission: Admission, completion: int, cost: float, status: int = 200) -> UsageRecord:
    return UsageRecord(
        request_id=admission.request_id, tenant=admission.tenant, key_id=admission.key_id,
        model="gemma", backend="tpu", prompt_tokens=4, completion_tokens=completion,
        cost_usd=cost, status=status, started_at=admission.admitted_at, duration_s=1.0,
        weighted_tokens=completion + 0.5,
    )  # fmt: skip


async def _eventually(check: Callable[[], object], seconds: float) -> None:
    """Poll an async ``check`` (Redis offers no signal for a lapsing lease) until it holds."""
    deadline = time.monotonic() + seconds
    while not await check():  # type: ignore[misc]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _billed(store: RedisStore, tenant: str) -> tuple[int, int, int, float]:
    rows = await store.usage(tenant=tenant, start=0, end=time.time() + 3600, group_by=["tenant"])
    if not rows:
        return (0, 0, 0, 0.0)
    row = rows[0]
    return (row.requests, row.prompt_tokens, row.completion_tokens, round(row.cost_usd, 9))


async def test_a_live_request_keeps_its_lease_long_past_the_ttl(
    replicas: Callable[[], RedisStore],
) -> None:
    a, b = replicas(), replicas()
    on_a = await _principal(a, "long", Limits(max_concurrent=1))
    on_b = await b.authenticate((await b.create_key("long")).secret)
    admission = await a.admit(on_a, tokens=10, cost_usd=0.0)
    await asyncio.sleep(4 * TTL_S)  # the lease would have lapsed three times over unrenewed
    with pytest.raises(LimitExceeded) as refused:
        await b.admit(on_b, tokens=10, cost_usd=0.0)
    assert refused.value.limit == "concurrency"
    await a.settle(admission, _usage(admission, 5, 0.0))
    await b.admit(on_b, tokens=10, cost_usd=0.0)


async def test_a_live_requests_lease_that_lapsed_while_redis_was_away_is_listed_again(
    replicas: Callable[[], RedisStore], unique_prefix: str
) -> None:
    a, b = replicas(), replicas()
    on_a = await _principal(a, "outlived", Limits(max_concurrent=1))
    on_b = await b.authenticate((await b.create_key("outlived")).secret)
    admission = await a.admit(on_a, tokens=10, cost_usd=0.0)
    # Redis away longer than the TTL: the lease lapsed, and an admission swept it away.
    leases = f"{unique_prefix}:{{outlived}}:fl"
    await a.redis.zrem(leases, admission.request_id)

    async def listed() -> bool:
        return await a.redis.zscore(leases, admission.request_id) is not None

    await _eventually(listed, 3 * TTL_S)  # the request still runs: a heartbeat lists it again
    with pytest.raises(LimitExceeded) as refused:
        await b.admit(on_b, tokens=10, cost_usd=0.0)
    assert refused.value.limit == "concurrency"
    await a.settle(admission, _usage(admission, 5, 0.0))
    await asyncio.sleep(2 * TTL_S / 3)  # settled: no heartbeat lists it again
    await b.admit(on_b, tokens=10, cost_usd=0.0)


async def test_a_dead_replicas_leases_lapse_and_give_back_tokens_and_budget(
    replicas: Callable[[], RedisStore],
) -> None:
    a, b = replicas(), replicas()
    limits = Limits(max_concurrent=2, tokens_per_minute=100, monthly_budget_usd=0.8)
    on_a = await _principal(a, "crashy", limits)
    on_b = await b.authenticate((await b.create_key("crashy")).secret)
    for _ in range(2):
        await a.admit(on_a, tokens=50, cost_usd=0.4)
    with pytest.raises(QuotaExceeded):  # both reservations count against the budget...
        await b.admit(on_b, tokens=50, cost_usd=0.4)
    await a.aclose()  # ...until the replica holding them dies without settling
    died = time.monotonic()

    async def admitted() -> bool:
        try:
            await b.admit(on_b, tokens=50, cost_usd=0.4)
        except (LimitExceeded, QuotaExceeded):
            return False
        return True

    await _eventually(admitted, 3 * TTL_S + 2.0)
    assert time.monotonic() - died <= 2 * TTL_S + 1.0  # seconds, not the hour it once was
    # Both leases, their 100 tokens and their $0.80 came back: a second one fits as well.
    await b.admit(on_b, tokens=50, cost_usd=0.4)


async def test_checkpoints_bill_a_dead_replicas_usage(
    replicas: Callable[[], RedisStore],
) -> None:
    a, b = replicas(), replicas()
    on_a = await _principal(a, "ckpt", Limits())
    admission = await a.admit(on_a, tokens=100, cost_usd=1.0)
    progress = _usage(admission, 0, 0.0, status=0)
    a.track(admission, lambda: progress)
    progress = _usage(admission, 20, 0.02, status=0)  # 20 tokens delivered so far
    await _eventually(lambda: _has_billed(b, "ckpt", 20), 3.0)
    await a.aclose()  # dies mid-stream: nobody will settle it
    assert await _billed(b, "ckpt") == (1, 4, 20, 0.02)
    partial = await b.record("ckpt", admission.request_id)
    assert partial is not None and partial.completion_tokens == 20 and partial.status == 0


async def test_the_final_settlement_replaces_checkpoints_and_a_repeat_changes_nothing(
    replicas: Callable[[], RedisStore],
) -> None:
    a = replicas()
    on_a = await _principal(a, "once", Limits(monthly_budget_usd=0.1))
    admission = await a.admit(on_a, tokens=100, cost_usd=0.05)
    progress = _usage(admission, 30, 0.03, status=0)
    a.track(admission, lambda: progress)
    await _eventually(lambda: _has_billed(a, "once", 30), 3.0)
    final = _usage(admission, 50, 0.05)
    await a.settle(admission, final)
    await a.settle(admission, final)  # a replayed repeat
    assert await _billed(a, "once") == (1, 4, 50, 0.05)
    assert await a.record("once", admission.request_id) == final
    # Spend is $0.05 (not $0.08) and nothing stays reserved: $0.05 more is admitted.
    await a.admit(on_a, tokens=10, cost_usd=0.05)
    await asyncio.sleep(2 * TTL_S)  # heartbeats pass: the settled request is not booked again
    assert await _billed(a, "once") == (1, 4, 50, 0.05)


async def _has_billed(store: RedisStore, tenant: str, completion: int) -> bool:
    return (await _billed(store, tenant))[2] == completion


async def _keyed(store: RedisStore, tenant: str, own: MeteredLimits) -> tuple[Principal, str]:
    """A caller whose key has limits of its own (no tenant limits), and the key's secret."""
    await store.create_tenant(tenant, Limits())
    issued = await store.create_key(tenant, KeyScope("ci-bot", limits=own))
    return await store.authenticate(issued.secret), issued.secret


async def test_a_live_request_keeps_its_keys_lease_too(
    replicas: Callable[[], RedisStore],
) -> None:
    a, b = replicas(), replicas()
    on_a, secret = await _keyed(a, "keyed", MeteredLimits(max_concurrent=1))
    on_b = await b.authenticate(secret)
    admission = await a.admit(on_a, tokens=10, cost_usd=0.0)
    await asyncio.sleep(4 * TTL_S)  # the heartbeat renews the key's lease beside the tenant's
    with pytest.raises(LimitExceeded) as refused:
        await b.admit(on_b, tokens=10, cost_usd=0.0)
    assert (refused.value.limit, refused.value.key) == ("concurrency", "key 'ci-bot'")
    await a.settle(admission, _usage(admission, 5, 0.0))
    await b.admit(on_b, tokens=10, cost_usd=0.0)


async def test_checkpoints_and_the_settlement_book_a_keys_spend_once(
    replicas: Callable[[], RedisStore],
) -> None:
    a = replicas()
    on_a, _ = await _keyed(a, "keyspend", MeteredLimits(monthly_budget_usd=0.1))
    admission = await a.admit(on_a, tokens=100, cost_usd=0.05)
    progress = _usage(admission, 30, 0.03, status=0)
    a.track(admission, lambda: progress)
    await _eventually(lambda: _has_billed(a, "keyspend", 30), 3.0)
    final = _usage(admission, 50, 0.05)
    await a.settle(admission, final)
    await a.settle(admission, final)
    # The key has spent $0.05, not $0.08: $0.049 more leaves it just under its $0.10...
    second = await a.admit(on_a, tokens=10, cost_usd=0.05)
    await a.settle(second, _usage(second, 10, 0.049))
    third = await a.admit(on_a, tokens=10, cost_usd=0.01)
    await a.settle(third, _usage(third, 10, 0.01))
    with pytest.raises(QuotaExceeded, match="key 'ci-bot'"):  # ...and $0.01 more spends it
        await a.admit(on_a, tokens=10, cost_usd=0.01)
