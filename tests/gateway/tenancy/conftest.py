"""Fixtures for store tests: a fresh store of each kind, with its own Redis key prefix."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.models import Limits

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "redis: needs the Redis server on 127.0.0.1:6379")
    config.addinivalue_line("markers", "slow: several processes or a restarted server")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    """A clock tests move by hand, so limit windows are exact and instant."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def unique_prefix() -> str:
    return "tgtest" + secrets.token_hex(4)


@pytest.fixture
async def memory_store(clock: Clock) -> AsyncIterator[MemoryStore]:
    store = MemoryStore(default_limits=Limits(), limit_window_s=60.0, clock=clock)
    yield store
    await store.aclose()
