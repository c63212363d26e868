"""Key checks while Redis is away: cached trust is bounded in age, revocations still land."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import StoreUnavailable
from gateway.tenancy.redis_store import RedisStore
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
    await store.aclose()
