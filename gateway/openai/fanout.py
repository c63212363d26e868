"""A request's generations: opened with fallback, run at most ``width`` upstream at a time.

One ``FanOut`` per request holds the current attempt of every choice. ``fold`` (non-streamed)
runs each choice to its end and, since nothing has reached the client yet, restarts a choice
whose upstream broke mid-answer on the next backend of the plan; ``stream`` yields pieces as
they arrive, opening the choices past the first wave as lanes free. An attempt replaced by a
restart goes to ``on_wasted`` (metered to its backend, never billed); the attempts left in
``opened`` are what the request is billed for, also when it fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import TypeVar

from adapters.base import BackendError, BadRequest
from gateway.openai.generation import Generation, Piece

T = TypeVar("T")
# Opens choice ``index`` on ``plan[tried:]``; ``opened_at`` is when its first attempt began.
OpenChoice = Callable[[int, int, float | None], Coroutine[None, None, Generation]]


class FanOut:
    """The choices of one request, by index: their current attempts and their lanes."""

    def __init__(
        self,
        count: int,
        width: int,
        attempts: int,
        open_choice: OpenChoice,
        on_wasted: Callable[[Generation, BackendError], None],
    ) -> None:
        self.count = count
        self.width = max(1, min(width, count))
        self.attempts = attempts  # the plan's length: how far a restart may walk
        self.gens: dict[int, Generation] = {}
        self._open_choice = open_choice
        self._on_wasted = on_wasted
        self._lanes = asyncio.Semaphore(self.width)
        self._held: set[int] = set()  # choices opened up front, each holding a lane

    @property
    def opened(self) -> list[Generation]:
        """The current attempt of every choice opened so far, in index order."""
        return [self.gens[i] for i in sorted(self.gens)]

    async def open_first(self) -> None:
        """Open the first wave (one choice per lane) before anything is sent to the client.

        When one fails after its fallbacks, the others are abandoned (what they received
        stays metered) and the error is raised.
        """
        wave = range(self.width)
        for index in wave:
            await self._lanes.acquire()
            self._held.add(index)
        if self.width == 1:  # the common case: no task per request
            await self._open(0)
            return
        tasks = [asyncio.ensure_future(self._open(i)) for i in wave]
        try:
            done = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [r for r in done if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        except BaseException as exc:  # one failed, or the request itself was cancelled
            for gen in self.opened:
                await gen.abandon(exc)
            raise

    async def fold(self, collect: Callable[[Generation], Awaitable[T]]) -> list[T]:
        """``collect`` of every choice, in index order, at most ``width`` running at once.

        A choice whose upstream breaks is restarted on the next backend of its plan; when
        that is not possible the error is raised and the other choices are cancelled.
        """

        async def lane(index: int) -> T:
            async with self._lanes:
                gen = await self._open(index)
                while True:
                    try:
                        return await collect(gen)
                    except BackendError as exc:
                        gen = await self._restart(gen, exc)

        if self.count == 1:
            return [await lane(0)]
        return await _all_or_none([lane(i) for i in range(self.count)])

    async def stream(self) -> AsyncIterator[tuple[Generation, Piece | None]]:
        """Pieces of every choice as they arrive; ``None`` marks one's end."""
        if self.count == 1:
            gen = self.gens[0]
            async for piece in gen.pieces():
                yield gen, piece
            yield gen, None
            return
        queue: asyncio.Queue[tuple[Generation, Piece | None] | BaseException] = asyncio.Queue()

        async def pump(index: int) -> None:
            held = index in self._held
            try:
                if not held:
                    await self._lanes.acquire()
                    held = True
                gen = self.gens.get(index) or await self._open(index)
                async for piece in gen.pieces():
                    await queue.put((gen, piece))
                await queue.put((gen, None))
            except BaseException as exc:
                await queue.put(exc)
            finally:
                if held:
                    self._lanes.release()

        tasks = [asyncio.ensure_future(pump(i)) for i in range(self.count)]
        try:
            remaining = self.count
            while remaining:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item[1] is None:
                    remaining -= 1
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _open(self, index: int, tried: int = 0, opened_at: float | None = None) -> Generation:
        gen = await self._open_choice(index, tried, opened_at)
        self.gens[index] = gen
        return gen

    async def _restart(self, gen: Generation, exc: BackendError) -> Generation:
        """The choice opened again past ``gen``'s backend, or ``exc`` raised when it cannot be."""
        tried = gen.fallbacks + 1
        if isinstance(exc, BadRequest) or tried >= self.attempts:
            raise exc
        try:
            fresh = await self._open(gen.index, tried, gen.opened_at)
        except BackendError:
            self.gens[gen.index] = gen  # the request fails: its bill keeps this attempt
            raise exc from None
        self._on_wasted(gen, exc)
        return fresh


async def _all_or_none(coros: Sequence[Coroutine[None, None, T]]) -> list[T]:
    """Results of all ``coros`` run concurrently; the first failure cancels the rest."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
