"""Fixtures every test directory shares: the anyio backend, free ports, a live server."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
