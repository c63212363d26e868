"""A vLLM fake that answers at a known pace: a fixed time to the first token, a fixed gap
between tokens, and optionally one request at a time (the rest queue, as on a full server)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes._server import Recorded, Send
from tests.fakes.vllm import FakeVLLM

TOKENS = tuple(f" t{i}" for i in range(8))


class PacedVLLM(FakeVLLM):
    """``FakeVLLM`` whose tokens leave ``ttft_s`` after the request, then every ``itl_s``;
    with ``capacity``, that many requests are served at once and the others wait."""

    def __init__(self, ttft_s: float, itl_s: float, *, capacity: int | None = None,
                 **kw: Any) -> None:
        super().__init__(kw.pop("tokens", TOKENS), **kw)
        self.ttft_s, self.itl_s, self.capacity = ttft_s, itl_s, capacity
        self._slots: asyncio.Semaphore | None = None  # made on the server's own loop

    async def pace(self, index: int) -> None:
        await asyncio.sleep(self.ttft_s if index == 0 else self.itl_s)

    async def handle(self, request: Recorded, send: Send) -> None:
        if self.capacity is None or request.method != "POST":
            await super().handle(request, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.capacity)
        async with self._slots:  # a client that leaves while waiting is cancelled here
            await super().handle(request, send)


@pytest.fixture
def paced() -> Iterator[PacedVLLM]:
    """60 ms to the first token, then 15 ms per token, eight tokens, no limit on concurrency."""
    fake = PacedVLLM(0.060, 0.015)
    with fake:
        yield fake


@pytest.fixture
def one_at_a_time() -> Iterator[PacedVLLM]:
    """Four tokens in 50 ms, one request at a time: 20 requests/s at most."""
    fake = PacedVLLM(0.020, 0.010, capacity=1, tokens=TOKENS[:4])
    with fake:
        yield fake
