"""A watch on one stream's silences: ends a wait for the next delta that lasts too long.

``asyncio.timeout`` around every wait would arm and cancel a timer per delta, which costs about
as much as relaying the delta; this keeps one timer per stream, re-armed only when it fires.
It cancels the waiting task just as ``asyncio.timeout`` does, and only while a wait is under
way, so a consumer busy with a delta (a slow client) is never timed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class Silence(Exception):
    """The wait for the next delta ran past the limit."""


class SilenceWatch:
    """Bounds each ``wait`` of one stream by ``limit_s``; ``close`` when the stream ends."""

    __slots__ = ("_cancelling", "_fired", "_handle", "_limit", "_loop", "_since", "_task")

    def __init__(self, limit_s: float) -> None:
        self._limit = limit_s
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None  # the task waiting now, if any
        self._since = 0.0
        self._cancelling = 0
        self._fired = False

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """``await awaitable``, or raise ``Silence`` once it has taken ``limit_s``."""
        task = asyncio.current_task()
        assert task is not None
        self._task, self._cancelling = task, task.cancelling()
        self._since = self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_at(self._since + self._limit, self._check)
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if self._fired:
                self._fired = False
                if task.uncancel() <= self._cancelling:
                    raise Silence from None
            raise
        finally:
            self._task = None
        if self._fired:  # it fired as the result arrived: take its cancellation here
            self._fired = False
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                if task.uncancel() > self._cancelling:
                    raise
        return result

    def close(self) -> None:
        """Stop the timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        task = self._task
        if task is None:
            return  # not waiting: the next wait arms the timer again
        due = self._since + self._limit
        if self._loop.time() >= due:
            self._fired = True
            task.cancel()
        else:
            self._handle = self._loop.call_at(due, self._check)
