"""The config's seed tenants, created once the store answers, so a replica can start without it.

The first attempt runs at start-up; while the store is unreachable later attempts run in the
background with a growing pause, and ``/readyz`` says not ready until one succeeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.errors import StoreUnavailable

log = logging.getLogger("tollgate.seeding")


class Seeding:
    """Runs ``work`` (create the seed tenants and development keys) until it succeeds.

    Only ``StoreUnavailable`` is retried: anything else at start-up is a configuration or
    program error and fails the start, as it always did.
    """

    def __init__(
        self,
        work: Callable[[], Awaitable[None]],
        *,
        first_pause_s: float = 0.25,
        longest_pause_s: float = 5.0,
    ) -> None:
        self._work = work
        self._first_pause = first_pause_s
        self._longest_pause = longest_pause_s
        self._task: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()  # set once the seed tenants exist

    @property
    def done(self) -> bool:
        """Whether the seed tenants exist."""
        return self.finished.is_set()

    async def start(self) -> None:
        """One attempt now; when the store is unreachable, keep trying in the background."""
        if await self._attempt():
            return
        log.warning("seed tenants: the store is unreachable; retrying in the background")
        self._task = asyncio.ensure_future(self._keep_trying())

    async def _attempt(self) -> bool:
        try:
            await self._work()
        except StoreUnavailable:
            return False
        self.finished.set()
        return True

    async def _keep_trying(self) -> None:
        pause = self._first_pause
        while True:
            await asyncio.sleep(pause)
            try:
                if await self._attempt():
                    log.info("seed tenants: created once the store answered")
                    return
            except Exception:
                log.exception("seed tenants failed; /readyz stays not ready")
                return
            pause = min(pause * 2, self._longest_pause)

    async def aclose(self) -> None:
        """Stop trying (at shutdown)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
