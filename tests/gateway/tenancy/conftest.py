"""Fixtures for store tests: a fresh store of each kind, with its own Redis key prefix."""

from __future__ import annotations

import secrets

import pytest

REDIS_URL = "redis://127.0.0.1:6379/0"
CACHE_TTL_S = 0.2  # the key cache TTL the Redis tests run with (production: 1 s)


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


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
