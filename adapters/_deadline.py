"""First-token and total deadlines of one upstream attempt, shared by every network adapter."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from adapters.base import Timeout, Timeouts

T = TypeVar("T")


class Deadline:
    """Bounds each await on the upstream by the first-token deadline, then by the total one.

    Each await gets its own ``asyncio.timeout_at`` rather than one scope around the whole
    stream, because a scope held across a ``yield`` would cancel the consumer's task instead.
    """

    __slots__ = ("_backend", "_first", "_total", "started")

    def __init__(self, timeouts: Timeouts, backend: str) -> None:
        now = asyncio.get_running_loop().time()
        self._backend = backend
        self._first = now + min(timeouts.first_token, timeouts.total)
        self._total = now + timeouts.total
        self.started = False  # set once the first output arrived; then only `total` applies

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` or raise ``Timeout`` when the current deadline passes."""
        started = self.started
        try:
            async with asyncio.timeout_at(self._total if started else self._first):
                return await awaitable
        except TimeoutError:
            which = "total" if started else "first-token"
            raise Timeout(f"{which} deadline passed", backend=self._backend) from None
