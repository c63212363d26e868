"""Creating a tenant in Redis is all or nothing: no failure leaves a tenant that cannot be fixed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from gateway.errors import InvalidRequest
from gateway.tenancy.models import Limits
from gateway.tenancy.redis_store import RedisStore

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
async def store(unique_prefix: str, redis_url: str) -> AsyncIterator[RedisStore]:
    made = RedisStore(redis_url, prefix=unique_prefix, key_cache_ttl_s=0.0)
    try:
        yield made
    finally:
        keys = [k async for k in made.redis.scan_iter(f"{unique_prefix}:*")]
        if keys:
            await made.redis.delete(*keys)
        await made.aclose()


@pytest.mark.timeout(10)
async def test_a_limit_redis_cannot_hold_creates_nothing(store: RedisStore) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await store.create_tenant("team-huge", Limits(max_concurrent=2**64))
    assert refused.value.param == "max_concurrent"
    assert await store.get_tenant("team-huge") is None
    assert [t.id for t in await store.list_tenants()] == []

    created = await store.create_tenant("team-huge", Limits(max_concurrent=2))
    assert created.limits.max_concurrent == 2
    stored = await store.get_tenant("team-huge")
    assert stored is not None and stored.limits.max_concurrent == 2
    secret = (await store.create_key("team-huge")).secret
    assert (await store.authenticate(secret)).tenant.limits.max_concurrent == 2
    assert await store.delete_tenant("team-huge")


@pytest.mark.timeout(10)
async def test_a_half_made_record_is_repaired_by_creating_again(
    store: RedisStore, unique_prefix: str
) -> None:
    # What a creation that failed between its writes used to leave behind.
    await store.redis.hset(f"{unique_prefix}:{{team-half}}:tenant", "created_at", "1.0")
    assert await store.get_tenant("team-half") is None
    await store.create_tenant("team-half", Limits(requests_per_minute=7))
    stored = await store.get_tenant("team-half")
    assert stored is not None and stored.limits.requests_per_minute == 7
    assert [t.id for t in await store.list_tenants()] == ["team-half"]


@pytest.mark.timeout(10)
async def test_concurrent_creations_agree_on_one_record(store: RedisStore) -> None:
    results = []

    async def create(limit: int) -> None:
        results.append(await store.create_tenant("team-race", Limits(requests_per_minute=limit)))

    async with anyio.create_task_group() as tg:
        for limit in range(1, 11):
            tg.start_soon(create, limit)
    stored = await store.get_tenant("team-race")
    assert stored is not None
    assert {(t.limits, t.created_at) for t in results} == {(stored.limits, stored.created_at)}
