"""A real uvicorn server on 127.0.0.1 and a free port, run in a thread for a test."""

from __future__ import annotations

import threading
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp


class LiveServer:
    """Serves ``app`` with uvicorn (httptools) until the context exits."""

    def __init__(self, app: ASGIApp, *, lifespan: str = "on") -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            loop="asyncio",
            http="httptools",
            lifespan=lifespan,
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        """The server's base URL."""
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LiveServer:
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server failed to start")
            self._thread.join(0.01)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.server.should_exit = True
        self._thread.join(10)
