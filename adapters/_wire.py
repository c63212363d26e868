"""A lean HTTP/1.1 client for the POSTs on the request path: keep-alive connections per
origin, responses parsed by httptools as they arrive.

aiohttp's ``ClientSession.post`` (cookie, proxy, redirect and tracing machinery, a task to write
each body) cost ~0.12 ms of CPU per streamed request here; this costs ~0.06 ms. It serves only
what an upstream call needs: one origin, plain or TLS, no proxy (proxied upstreams keep using
aiohttp), ``Content-Length`` bodies out, any framing back. Responses offer the small part of
aiohttp's interface the adapters use (``status``, ``headers``, ``content.read_nowait/readany/
at_eof/is_eof``, ``read``, ``release``, ``close``), so both clients go through the same code.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from http.cookies import SimpleCookie

import httptools
from aiohttp import CookieJar
from yarl import URL

_HIGH_WATER = 256 * 1024  # buffered body bytes before we stop reading the socket


class ConnectFailed(OSError):
    """The TCP/TLS connection could not be made."""


class ConnectTimedOut(TimeoutError):
    """The TCP/TLS connection was not made within the connect timeout."""


class ResponseBroken(ConnectionError):
    """The connection ended or sent something unreadable before the response was complete."""


class WireResponse(asyncio.Protocol):
    """One keep-alive connection, and the response currently being read on it."""

    _parser: httptools.HttpResponseParser | None
    _chunks: list[bytes]
    _buffered: int
    _error: BaseException | None
    _complete: bool
    _keep_alive: bool
    _received: bool
    status: int
    headers: dict[str, str]
    _cookies: list[str]

    def __init__(self, pool: WirePool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._head: asyncio.Future[None] | None = None
        self.closed = False
        self._begin(None)

    # -- the request ---------------------------------------------------------------------

    def send(self, head_and_body: bytes) -> asyncio.Future[None]:
        """Start a request on this (idle) connection; the future resolves with the head."""
        if self.closed:  # the upstream closed it while it was idle
            raise ResponseBroken("the pooled connection was closed by the upstream")
        self._begin(httptools.HttpResponseParser(self))
        self._head = asyncio.get_running_loop().create_future()
        assert self._transport is not None
        self._transport.write(head_and_body)
        return self._head

    @property
    def content(self) -> WireResponse:
        """The body reader (this object), as aiohttp's ``response.content``."""
        return self

    # -- body reading (aiohttp's StreamReader subset) -------------------------------------

    def read_nowait(self) -> bytes:
        """Body bytes already received (b"" if none); raises what broke the response."""
        if self._chunks:
            data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks, self._buffered = [], 0
            if self._paused and self._transport is not None:
                self._paused = False
                self._transport.resume_reading()
            return data
        if self._error is not None:
            raise self._error
        return b""

    def at_eof(self) -> bool:
        """The whole body was received and read."""
        return self._complete and not self._chunks

    is_eof = at_eof

    async def readany(self) -> bytes:
        """The next body bytes, waiting for some; b"" at the end of the body."""
        while not self._chunks and not self._complete and self._error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.read_nowait()

    async def read(self) -> bytes:
        """The rest of the body."""
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Done with the response: back to the pool if it was read to its end, else closed."""
        self._pool.done(self, reusable=self.at_eof() and self._keep_alive and not self.closed)

    def close(self) -> None:
        """Drop the connection (the upstream sees the disconnect and stops)."""
        self._pool.done(self, reusable=False)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self._parser is None:  # bytes while idle: the connection cannot be trusted
            self.shut()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ResponseBroken(f"unreadable HTTP response: {exc}"))
            self.shut()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is None or self._complete:
            return
        if exc is None and self.status and not self._framed():
            self._complete = True  # a body delimited by the connection's end (HTTP/1.0 style)
            self._wake()
            return
        self._fail(ResponseBroken(f"upstream closed the connection mid-response ({exc!r})"))

    # -- httptools callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key == "set-cookie":
            self._cookies.append(text)
        self.headers[key] = text

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        if self._cookies:
            self._pool.remember_cookies(self._cookies)
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(bytes(body))
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._complete = True
        self._wake()

    # -- internals -----------------------------------------------------------------------

    def _begin(self, parser: httptools.HttpResponseParser | None) -> None:
        """Fresh per-response state; ``parser`` None while the connection is idle."""
        self._parser = parser
        self._chunks = []
        self._buffered = 0
        self._error = None
        self._complete = self._keep_alive = self._received = False
        self.status = 0
        self.headers = {}
        self._cookies = []

    def detach(self) -> None:
        """The response is finished: the connection idles (its status and headers stay)."""
        self._parser = None

    def _framed(self) -> bool:
        return "content-length" in self.headers or "transfer-encoding" in self.headers

    @property
    def fresh(self) -> bool:
        """Nothing came back yet on this request (a stale pooled connection may be retried)."""
        return not self._received

    def shut(self) -> None:
        """Close the socket."""
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class WirePool:
    """Keep-alive connections to one origin, at most ``limit`` requests in flight."""

    def __init__(
        self,
        origin: URL,
        *,
        ssl_context: ssl.SSLContext | None,
        limit: int,
        connect_timeout: float,
        keepalive_s: float,
        headers: Mapping[str, str],
    ) -> None:
        self._host = origin.host or "127.0.0.1"
        self._port = origin.port or (443 if origin.scheme == "https" else 80)
        self._ssl = ssl_context
        self._origin = origin
        self._connect_timeout = connect_timeout
        self._keepalive_s = keepalive_s
        default_port = origin.is_default_port()
        host = self._host if default_port else f"{self._host}:{self._port}"
        lines = [f"host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
        self._common = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._idle: deque[tuple[WireResponse, float]] = deque()
        self._slots = asyncio.Semaphore(limit)
        self._jar: CookieJar | None = None

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> WireResponse:
        """Send a POST; the response once its status and headers arrived."""
        head = [f"POST {path} HTTP/1.1\r\n".encode("latin-1"), self._common]
        for key, value in headers.items():
            head.append(f"{key}: {value}\r\n".encode("latin-1"))
        if self._jar is not None and len(self._jar):
            cookies = self._jar.filter_cookies(self._origin.join(URL(path)))
            if cookies:
                pairs = "; ".join(f"{k}={m.value}" for k, m in cookies.items())
                head.append(f"cookie: {pairs}\r\n".encode("latin-1"))
        head.append(f"content-length: {len(body)}\r\n\r\n".encode("latin-1"))
        message = b"".join(head) + body
        await self._slots.acquire()
        conn: WireResponse | None = None
        try:
            while True:
                conn, reused = await self._connection()
                try:
                    await conn.send(message)
                    return conn
                except ResponseBroken:
                    conn.shut()
                    if reused and conn.fresh:
                        continue  # the upstream had closed this idle connection: a new one
                    raise
        except BaseException:
            if conn is not None:
                conn.shut()  # cancelled or failed mid-request: the connection is not reusable
            self._slots.release()
            raise

    def done(self, conn: WireResponse, *, reusable: bool) -> None:
        """The request on ``conn`` finished: keep the connection for the next one, or close."""
        self._slots.release()
        conn.detach()
        if reusable:
            self._idle.append((conn, asyncio.get_running_loop().time()))
        else:
            conn.shut()

    def remember_cookies(self, values: list[str]) -> None:
        """Keep what the upstream set (sticky load-balancer cookies) for later requests."""
        if self._jar is None:
            self._jar = CookieJar(unsafe=True)
        for value in values:
            self._jar.update_cookies(SimpleCookie(value), self._origin)

    async def aclose(self) -> None:
        """Close every idle connection."""
        while self._idle:
            self._idle.pop()[0].shut()

    async def _connection(self) -> tuple[WireResponse, bool]:
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn, since = self._idle.pop()  # the most recently used: likeliest to be alive
            if conn.closed or now - since > self._keepalive_s:
                conn.shut()
                continue
            return conn, True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, conn = await loop.create_connection(
                    lambda: WireResponse(self),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError as exc:
            raise ConnectTimedOut(f"connect to {self._host}:{self._port} timed out") from exc
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        conn.connection_made(transport)  # uvloop may call it only after returning
        return conn, False
