"""While Redis is away: cached key trust is bounded in age, and each replica admits only its
share of every limit (limit / live replicas; budget from the last known spend)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.errors import QuotaExceeded, StoreUnavailable
from gateway.settings import parse_settings
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
from tests.live import LiveServer
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(30)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path)
    redis.start()
    yield redis
    if redis.process is not None and redis.process.poll() is None:
        redis.kill()


def _replica(server: RedisServer, tmp_path: Path, name: str, clock: Clock,
             **options: float) -> RedisStore:
    return RedisStore(f"redis://127.0.0.1:{server.port}/0", spool_dir=str(tmp_path / name),
                      clock=clock, **options)  # type: ignore[arg-type]


async def test_a_key_revoked_elsewhere_stops_working_during_an_outage(
    server: RedisServer, tmp_path: Path
) -> None:
    clock = Clock()
    a, b = (_replica(server, tmp_path, n, clock) for n in ("a", "b"))
    issued = await a.create_key("team-x")
    assert (await b.authenticate(issued.secret)).tenant.id == "team-x"  # cached on B
    assert await a.revoke_key(issued.record.id)
    clock.now += 3.0  # the revocation is three seconds old
    server.kill()
    for _ in range(10):
        with pytest.raises(StoreUnavailable):
            await b.authenticate(issued.secret)
    for store in (a, b):
        await store.aclose()


async def test_a_key_checked_within_the_trust_bound_rides_out_a_short_outage(
    server: RedisServer, tmp_path: Path
) -> None:
    clock = Clock()
    b = _replica(server, tmp_path, "b", clock, key_cache_ttl_s=1.0, outage_trust_s=5.0)
    issued = await b.create_key("team-y")
    await b.authenticate(issued.secret)
    server.kill()
    clock.now += 2.0  # the cache entry has expired; Redis cannot be asked
    assert (await b.authenticate(issued.secret)).tenant.id == "team-y"
    clock.now += 4.0  # past the bound: refused rather than trusted blindly
    with pytest.raises(StoreUnavailable):
        await b.authenticate(issued.secret)
    await b.aclose()


async def test_after_a_redis_restart_the_first_requests_succeed_on_fresh_connections(
    server: RedisServer, tmp_path: Path
) -> None:
    clock = Clock()
    store = _replica(server, tmp_path, "c", clock)
    issued = await store.create_key("team-z")
    principal = await store.authenticate(issued.secret)
    await asyncio.gather(*(store.admit(principal, tokens=1, cost_usd=0.0) for _ in range(8)))
    server.kill()  # the pool holds several connections now
    server.start()  # same port, same data (the AOF), every pooled connection now dead
    for _ in range(24):
        clock.now += 2.0  # past the key cache: every request asks Redis
        checked = await store.authenticate(issued.secret)
        await store.admit(checked, tokens=1, cost_usd=0.0)
    # Every one was checked by the admission script (none on local shares, none unchecked).
    assert not store.degraded
    assert await store.redis.zcard("tg:{team-z}:rq") == 8 + 24
    await store.aclose()


async def _until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)  # the heartbeat has no signal of its own


async def _two_replicas(server: RedisServer, tmp_path: Path) -> tuple[RedisStore, RedisStore]:
    """Two announced replicas that trust a checked key for a minute of outage."""
    clock = Clock()
    a, b = (_replica(server, tmp_path, n, clock, outage_trust_s=60.0, lease_ttl_s=0.6)
            for n in ("a", "b"))  # fmt: skip
    await a.start()
    await b.start()
    await _until(lambda: a.replicas == 2 and b.replicas == 2)
    return a, b


async def _principal(store: RedisStore, tenant: str, limits: Limits) -> Principal:
    await store.create_tenant(tenant, limits)
    return await store.authenticate((await store.create_key(tenant)).secret)


def _usage(admission: Admission, cost: float) -> UsageRecord:
    return UsageRecord(
        request_id=admission.request_id, tenant=admission.tenant, key_id=admission.key_id,
        model="m", backend="b", prompt_tokens=1, completion_tokens=1, cost_usd=cost, status=200,
        started_at=admission.admitted_at, duration_s=0.01,
    )  # fmt: skip


async def test_during_an_outage_a_replica_admits_only_its_share_of_rate_and_concurrency(
    server: RedisServer, tmp_path: Path
) -> None:
    a, b = await _two_replicas(server, tmp_path)
    principal = await _principal(a, "team-r", Limits(requests_per_minute=60, max_concurrent=4))
    first = await a.admit(principal, tokens=1, cost_usd=0.0)
    await a.settle(first, _usage(first, 0.0))
    server.kill()
    held = [await a.admit(principal, tokens=1, cost_usd=0.0) for _ in range(2)]
    with pytest.raises(LimitExceeded) as refused:  # 4 at once / 2 replicas
        await a.admit(principal, tokens=1, cost_usd=0.0)
    assert refused.value.limit == "concurrency"
    assert a.degraded
    for admission in held:
        await a.settle(admission, _usage(admission, 0.0))
    admitted, stopped = len(held), None
    while admitted < 100 and stopped is None:
        try:
            admission = await a.admit(principal, tokens=1, cost_usd=0.0)
        except LimitExceeded as exc:
            stopped = exc.limit
            continue
        await a.settle(admission, _usage(admission, 0.0))
        admitted += 1
    assert (admitted, stopped) == (30, "requests")  # 60 a minute / 2 replicas
    for store in (a, b):
        await store.aclose()


async def test_during_an_outage_a_budget_is_shared_from_the_last_known_spend(
    server: RedisServer, tmp_path: Path
) -> None:
    a, b = await _two_replicas(server, tmp_path)
    principal = await _principal(a, "team-s", Limits(monthly_budget_usd=1.0))
    stranger = await b.authenticate((await b.create_key("team-s")).secret)
    for _ in range(4):
        admission = await a.admit(principal, tokens=1, cost_usd=0.1)
        await a.settle(admission, _usage(admission, 0.1))
    server.kill()
    admitted = 0
    while admitted < 100:
        try:
            admission = await a.admit(principal, tokens=1, cost_usd=0.1)
        except QuotaExceeded:
            break
        await a.settle(admission, _usage(admission, 0.1))
        admitted += 1
    assert admitted == 3  # ($1.00 - $0.40 spent) / 2 replicas, $0.10 a request
    with pytest.raises(StoreUnavailable):  # B never heard what the tenant spent
        await b.admit(stranger, tokens=1, cost_usd=0.1)
    for store in (a, b):
        await store.aclose()


async def test_during_an_outage_a_key_is_held_to_its_share_of_its_own_limits(
    server: RedisServer, tmp_path: Path
) -> None:
    a, b = await _two_replicas(server, tmp_path)
    own = MeteredLimits(requests_per_minute=60, monthly_budget_usd=1.0)
    issued = await a.create_key("team-k", KeyScope("ci-bot", limits=own))
    principal = await a.authenticate(issued.secret)
    on_b = await b.authenticate(issued.secret)
    first = await a.admit(principal, tokens=1, cost_usd=0.1)  # A hears what the key spent
    await a.settle(first, _usage(first, 0.1))
    server.kill()
    admitted, stopped = 0, None
    while admitted < 100 and stopped is None:
        try:
            admission = await a.admit(principal, tokens=1, cost_usd=0.0)
        except LimitExceeded as exc:
            stopped = (exc.limit, exc.key)
            continue
        await a.settle(admission, _usage(admission, 0.0))
        admitted += 1
    assert (admitted, stopped) == (30, ("requests", "key 'ci-bot'"))  # 60 a minute / 2
    with pytest.raises(StoreUnavailable, match="key's spend"):  # B never heard it
        await b.admit(on_b, tokens=1, cost_usd=0.1)
    for store in (a, b):
        await store.aclose()


def test_readyz_and_metrics_say_when_limits_are_per_replica(
    server: RedisServer, tmp_path: Path
) -> None:
    settings = parse_settings(
        {"store": {"redis_url": f"redis://127.0.0.1:{server.port}/0", "lease_ttl_s": 0.6,
                   "spool_dir": str(tmp_path / "spool")},
         "admin_key": "tg-admin-outage"},
        env={},
    )  # fmt: skip
    with LiveServer(create_app(settings, backends=[])) as live:

        def mode() -> tuple[str, str]:
            ready = httpx.get(f"{live.url}/readyz").json()
            gauge = [line for line in httpx.get(f"{live.url}/metrics").text.splitlines()
                     if line.startswith("tollgate_store_degraded")]  # fmt: skip
            return ready["limits"], gauge[0].split()[-1]

        assert mode() == ("fleet", "0.0")
        server.kill()
        assert mode() == ("per_replica", "1.0")


async def test_a_request_admitted_during_an_outage_counts_and_is_checkpointed_once_redis_is_back(
    server: RedisServer, tmp_path: Path
) -> None:
    a, b = await _two_replicas(server, tmp_path)
    principal = await _principal(a, "team-o", Limits(max_concurrent=2))
    on_b = await b.authenticate((await b.create_key("team-o")).secret)
    server.kill()
    local = await a.admit(principal, tokens=10, cost_usd=0.0)  # on A's share: Redis never saw it
    progress = replace(_usage(local, 0.0), completion_tokens=7, status=0)
    a.track(local, lambda: progress)
    server.start()
    # A's heartbeat lists the lease in Redis and checkpoints the 7 tokens relayed so far, so
    # that a kill -9 of A now would lose at most a heartbeat's worth...
    await _until_async(lambda: _completion_tokens(b, "team-o"), 7)
    # ...and the fleet counts it: B admits one more, not two.
    await b.admit(on_b, tokens=10, cost_usd=0.0)
    with pytest.raises(LimitExceeded) as refused:
        await b.admit(on_b, tokens=10, cost_usd=0.0)
    assert refused.value.limit == "concurrency"
    await a.settle(local, replace(_usage(local, 0.0), completion_tokens=9))
    await b.admit(on_b, tokens=10, cost_usd=0.0)
    assert await _completion_tokens(b, "team-o") == 9  # the settlement replaced the checkpoint
    for store in (a, b):
        await store.aclose()


async def _completion_tokens(store: RedisStore, tenant: str) -> int:
    rows = await store.usage(tenant=tenant, start=0, end=time.time() + 3600, group_by=["tenant"])
    return rows[0].completion_tokens if rows else 0


async def _until_async(read: Callable[[], Awaitable[int]], want: int, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while (got := await read()) != want:
        assert time.monotonic() < deadline, f"got {got}, want {want}"
        await asyncio.sleep(0.05)  # the heartbeat has no signal of its own


async def test_once_redis_answers_a_replica_lists_its_outage_leases_at_once(
    server: RedisServer, tmp_path: Path
) -> None:
    clock = Clock()
    # Heartbeats every 10 s: only Redis's return, not the timer, can list the lease in time.
    a, b = (_replica(server, tmp_path, n, clock, outage_trust_s=60.0, lease_ttl_s=30.0)
            for n in ("a", "b"))  # fmt: skip
    principal = await _principal(a, "team-w", Limits(max_concurrent=3))
    on_b = await b.authenticate((await b.create_key("team-w")).secret)
    server.kill()
    await a.admit(principal, tokens=1, cost_usd=0.0)  # on A's share, unknown to Redis
    server.start()
    await a.admit(principal, tokens=1, cost_usd=0.0)  # Redis answers A again
    await _until_async(lambda: a.redis.zcard("tg:{team-w}:fl"), 2, seconds=2.0)
    await b.admit(on_b, tokens=1, cost_usd=0.0)
    with pytest.raises(LimitExceeded):  # the outage's request counts: 3 of 3
        await b.admit(on_b, tokens=1, cost_usd=0.0)
    for store in (a, b):
        await store.aclose()
