"""Fixtures every test directory shares: the anyio backend, free ports, a live server."""

from __future__ import annotations

import pytest

# The real servers' session fixtures (real_jetstream, real_llama_cpp, engine_serve_tiny) and
# a local Redis Cluster (redis_cluster), for every directory.
pytest_plugins = ["tests.real.servers", "tests.real.engine_server", "tests.redis_cluster"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
