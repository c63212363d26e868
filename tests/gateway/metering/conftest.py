"""Fixtures for metering tests: a hand-moved clock, and replicas of each store kind."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.store import Store

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = 1_750_000_000.0 - 1_750_000_000.0 % 3600  # the start of an hour: windows align with it


class Clock:
    """A clock tests move by hand, so windows open and close exactly when a test says."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


# Replicas: each call is one more gateway process's view of the same ledger. The in-process
# store is one process, so its replicas share the one store object.
Replicas = Callable[[float], Store]


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
    ]
)
async def replicas(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Replicas]:
    prefix = "tgtest" + secrets.token_hex(4)
    made: list[Store] = []
    url = request.getfixturevalue("redis_cluster").url if request.param == "cluster" else REDIS_URL

    def replica(window_s: float) -> Store:
        store: Store
        if request.param == "memory":
            if made:
                return made[0]
            store = MemoryStore(limit_window_s=60.0, metering_window_s=window_s, clock=clock)
        else:
            from gateway.tenancy.redis_store import RedisStore

            store = RedisStore(url, prefix=prefix, metering_window_s=window_s)
        made.append(store)
        return store

    yield replica
    for store in made:
        if request.param != "memory":
            from gateway.tenancy.redis_store import RedisStore

            assert isinstance(store, RedisStore)
            await store.drop_everything()
        await store.aclose()
