"""Shared fixtures of the adapter tests: anyio on asyncio, and the fakes importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `tests.fakes` must import however pytest was started (`pytest` does not put the
# repository root on sys.path, `python -m pytest` does).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
