"""``tollgate engine serve`` in-process: a ``ModelServer`` on its own event loop and thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

from engine.server import ModelServer
from engine.server.model_server import Loader


class ServerThread:
    """Runs a ``ModelServer`` on 127.0.0.1 (free ports) until the context exits.

    The engine is the caller's (``close_engine=False``): tests share one.
    """

    def __init__(self, load: Loader, *, grace_s: float = 5.0, wait_loaded: bool = True) -> None:
        self.server = ModelServer(
            load, host="127.0.0.1", port=0, metrics_port=0, grace_s=grace_s, close_engine=False
        )
        self._wait_loaded = wait_loaded
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def url(self) -> str:
        return f"grpc://{self.target}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    async def _main(self) -> None:
        try:
            await self.server.start()
            if self._wait_loaded:
                await self.server.loaded()
        except BaseException as error:
            self._error = error
            self._ready.set()
            raise
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await self.server.stop()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(120):
            raise RuntimeError("the model server did not start")
        if self._error is not None:
            raise RuntimeError("the model server failed to start") from self._error
        return self

    def stop(self) -> None:
        """Drain and stop (as SIGTERM does); returns when stopped."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
