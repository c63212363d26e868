"""What the HTTP adapters share: the client, deadlines on a streamed POST, and error mapping.

Every upstream answer passes through ``status_error`` (``adapters._errors``, one table for
statuses and bodies) or ``transport_error`` on its way to the router. Below HTTP: connect
failures are Unavailable, a connect timeout is Timeout, broken bodies UpstreamProtocolError;
addresses and exception texts stay in ``detail``, out of what a client reads.

The client is one ``aiohttp.ClientSession`` per backend, made on first use inside the
running event loop (aiohttp binds a session to its loop, and the app may be built outside
the loop that serves). A response read to its end goes back to the pool; one abandoned
mid-body is closed, which is what tells the upstream to stop generating.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from adapters._batch import DeltaBatch
from adapters._deadline import Deadline
from adapters._errors import status_error
from adapters._sse import SSEDecoder
from adapters._wire import ConnectFailed, ConnectTimedOut, ResponseBroken, WirePool, WireResponse
from adapters.base import (
    BackendError,
    Capabilities,
    Delta,
    LoadSnapshot,
    Timeout,
    Timeouts,
    Unavailable,
    UpstreamProtocolError,
)

JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}
SSE_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}
DEFAULT_TIMEOUTS = Timeouts()
KEEPALIVE_EXPIRY = 30.0  # seconds an idle pooled connection is kept
# An upstream response: aiohttp's (proxied upstreams, probes) or the lean client's.
Response = aiohttp.ClientResponse | WireResponse
# What a request or a body read can raise below HTTP. Everything else is a bug of ours.
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, ValueError)
# What reading a decoded event the upstream got wrong raises (missing keys, wrong types).
MALFORMED = (KeyError, TypeError, AttributeError, IndexError, ValueError)
# Reads one upstream event: its output goes into the batch; a delta it returns goes out first.
EventReader = Callable[[Any, DeltaBatch], Delta | None]


def tls_verify(ca_file: str | None, insecure: bool) -> ssl.SSLContext | bool:
    """A TLS setting (``httpx`` verify, aiohttp ``ssl``): system roots, a private CA, or
    (explicitly) no checks."""
    if insecure:
        return False
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return True


def ssl_context(setting: ssl.SSLContext | bool) -> ssl.SSLContext:
    """The context a ``tls_verify`` setting stands for (the lean client needs a context)."""
    if isinstance(setting, ssl.SSLContext):
        return setting
    if setting:
        return _system_roots()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@functools.cache
def _system_roots() -> ssl.SSLContext:
    return ssl.create_default_context()  # ~20 ms to load the roots: once per process


def build_client(
    url: str,
    timeouts: Timeouts,
    *,
    api_key: str | None,
    tls_ca_file: str | None,
    tls_insecure: bool,
    max_connections: int,
) -> httpx.AsyncClient:
    """An ``httpx`` client for JetStream's occasional metrics scrape (not on the hot path)."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        base_url=url.rstrip("/"),
        headers=headers,
        verify=tls_verify(tls_ca_file, tls_insecure),
        timeout=httpx.Timeout(timeouts.total, connect=timeouts.connect, pool=timeouts.connect),
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_EXPIRY,
        ),
        follow_redirects=False,
    )


def env_proxy(url: URL) -> tuple[URL | None, dict[str, str] | None]:
    """The proxy the environment (``HTTPS_PROXY``, ``NO_PROXY``...) names for ``url``, read
    once rather than per request, and its ``Proxy-Authorization`` header if any."""
    try:
        proxy, auth = get_env_proxy_for_url(url)
    except LookupError:
        return None, None
    return proxy, ({"proxy-authorization": auth.encode()} if auth else None)


def transport_error(exc: BaseException, backend: str) -> BackendError:
    """The error for a failure below HTTP: refused, reset, timed out or truncated."""
    said = f"{exc!r}"
    if isinstance(exc, ConnectTimedOut | aiohttp.ConnectionTimeoutError):
        # Connecting, or waiting for a pooled connection.
        return Timeout("Connecting to the backend timed out.", backend=backend, detail=said)
    if isinstance(exc, ConnectFailed):
        return Unavailable("The backend cannot be reached.", backend=backend, detail=said)
    if isinstance(exc, TimeoutError):  # aiohttp's socket timeouts are TimeoutErrors too
        return Timeout("The backend timed out.", backend=backend, detail=said)
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientHttpProxyError):
        # Refused, DNS, TLS, proxy.
        return Unavailable("The backend cannot be reached.", backend=backend, detail=said)
    if isinstance(
        exc,
        ResponseBroken
        | aiohttp.ClientPayloadError
        | aiohttp.ServerDisconnectedError
        | aiohttp.ClientResponseError,
    ):
        return UpstreamProtocolError(
            "The backend's answer broke off.", backend=backend, detail=said
        )
    return Unavailable("The backend cannot be reached.", backend=backend, detail=said)


def loads(data: str | bytes, backend: str) -> Any:
    """Parse JSON from the upstream; anything unreadable is a protocol error."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(
            "The backend sent an answer that is not JSON.",
            backend=backend,
            detail=f"{str(data)[:200]!r}",
        ) from exc


def finish(response: Response) -> None:
    """Give the connection back when the body was read to its end; otherwise drop it, so
    that an upstream still generating sees the disconnect."""
    if response.content.is_eof():
        response.release()
    else:
        response.close()


@dataclass(frozen=True, slots=True)
class Fetched:
    """A whole probe answer: status, content type and body."""

    status: int
    content_type: str
    body: bytes
    charset: str | None = None

    @property
    def text(self) -> str:
        try:
            return self.body.decode(self.charset or "utf-8", "replace")
        except LookupError:  # a charset Python does not know
            return self.body.decode("utf-8", "replace")


class HTTPBackend:
    """Construction, pooled client, deadlines and probes shared by the HTTP adapters."""

    name: str
    kind: str
    models: Mapping[str, str]
    capabilities: Capabilities

    def __init__(
        self,
        name: str,
        url: str,
        models: Mapping[str, str],
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        api_key: str | None = None,
        tls_ca_file: str | None = None,
        tls_insecure: bool = False,
        metrics_url: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.models = dict(models)
        self.timeouts = timeouts
        self.metrics_url = metrics_url
        self.options: Mapping[str, Any] = dict(options or {})
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._ssl = tls_verify(tls_ca_file, tls_insecure)  # a bad CA file fails here, early
        self._max_connections = int(self.options.get("max_connections") or 256)
        # Reads are bounded by our own deadlines; aiohttp bounds only the connect (which
        # includes waiting for a pooled connection) and never the whole exchange.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeouts.connect, sock_connect=timeouts.connect
        )
        # A probe gets `connect` for each step, reads included.
        self._probe_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.connect,
            sock_connect=timeouts.connect,
            sock_read=timeouts.connect,
        )
        self._urls: dict[str, tuple[URL, URL | None, dict[str, str] | None]] = {}
        self._http: aiohttp.ClientSession | None = None
        self._wires: dict[URL, WirePool] = {}
        self.capabilities = self._configure(self.options)

    def _configure(self, options: Mapping[str, Any]) -> Capabilities:
        """Read the adapter's own options; say what the upstream can honour."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close pooled connections."""
        session, self._http = self._http, None
        if session is not None:
            await session.close()
        wires, self._wires = self._wires, {}
        for pool in wires.values():
            await pool.aclose()

    def _session(self) -> aiohttp.ClientSession:
        """The pooled session, made on first use in the running event loop."""
        session = self._http
        if session is None:
            session = self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    ttl_dns_cache=300,
                    keepalive_timeout=KEEPALIVE_EXPIRY,
                    ssl=self._ssl,
                ),
                headers=self._headers,
                timeout=self._timeout,
                cookie_jar=aiohttp.CookieJar(unsafe=True),  # as httpx kept them: sticky LBs
            )
        return session

    def _wire(self, url: URL) -> WirePool:
        """The lean client's pool for ``url``'s origin, made on first use in the running loop."""
        origin = url.origin()
        pool = self._wires.get(origin)
        if pool is None:
            pool = self._wires[origin] = WirePool(
                origin,
                ssl_context=ssl_context(self._ssl) if url.scheme == "https" else None,
                limit=self._max_connections,
                connect_timeout=self.timeouts.connect,
                keepalive_s=KEEPALIVE_EXPIRY,
                headers=self._headers,
            )
        return pool

    def _target(self, path_or_url: str) -> tuple[URL, URL | None, dict[str, str] | None]:
        """The URL for a path under ``url`` (or an absolute URL), and its proxy; cached."""
        target = self._urls.get(path_or_url)
        if target is None:
            absolute = path_or_url.startswith(("http://", "https://"))
            url = URL(path_or_url if absolute else self.url + path_or_url)
            target = (url, *env_proxy(url))
            if len(self._urls) >= 1024:  # paths are few (per model at most); stay bounded
                self._urls.clear()
            self._urls[path_or_url] = target
        return target

    async def _post_raw(self, path: str, data: bytes, headers: Mapping[str, str]) -> Response:
        url, proxy, proxy_headers = self._target(path)
        try:
            if proxy is None:
                return await self._wire(url).post(url.raw_path_qs, data, headers)
            return await self._session().post(
                url,
                data=data,
                headers=headers,
                allow_redirects=False,
                proxy=proxy,
                proxy_headers=proxy_headers,
            )
        except TRANSPORT_ERRORS as exc:
            # Mapped here, inside the deadline: aiohttp's connect timeout is a TimeoutError,
            # which the deadline would otherwise report as its own.
            raise transport_error(exc, self.name) from exc

    async def _send(
        self, path: str, body: Mapping[str, Any], deadline: Deadline, headers: Mapping[str, str]
    ) -> Response:
        """POST ``body``; the open response once its status is known to be good."""
        response = await deadline.run(self._post_raw(path, orjson.dumps(body), headers))
        if response.status >= 400:
            try:
                raw = await self._read(response, deadline)
            finally:
                finish(response)
            raise status_error(response.status, response.headers, raw, self.name)
        return response

    async def _read(self, response: Response, deadline: Deadline) -> bytes:
        try:
            return await deadline.run(response.read())
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, self.name) from exc

    async def _post_json(self, path: str, body: Mapping[str, Any], deadline: Deadline) -> Any:
        """POST and parse a whole JSON answer."""
        response = await self._send(path, body, deadline, JSON_HEADERS)
        try:
            raw = await self._read(response, deadline)
        finally:
            finish(response)
        return loads(raw, self.name)

    async def _events(
        self, path: str, body: Mapping[str, Any], deadline: Deadline
    ) -> AsyncGenerator[list[str], None]:
        """POST and yield, per read of the body, the data of the server-sent events it
        completed (a batch: adapters turn one read into one delta, so a gateway behind a
        fast upstream handles a burst of events once rather than once per event).

        Bytes already buffered are taken without a timer; only a read that must wait runs
        under the deadline. Closing this generator before the body ended closes the
        connection, which is what tells the upstream to stop generating when our client
        went away.
        """
        response = await self._send(path, body, deadline, SSE_HEADERS)
        try:
            content = response.content
            decoder = SSEDecoder()
            while True:
                try:
                    chunk = content.read_nowait()  # raises what broke the connection, too
                    if not chunk and not content.at_eof():
                        chunk = await deadline.run(content.readany())
                except TRANSPORT_ERRORS as exc:
                    raise transport_error(exc, self.name) from exc
                if not chunk:  # the body's end
                    return
                batch = decoder.feed(chunk)
                if batch:
                    yield batch
        finally:
            finish(response)

    async def _deltas(
        self, events: AsyncGenerator[list[Any], None], deadline: Deadline, read_event: EventReader
    ) -> AsyncGenerator[Delta, None]:
        """One delta per read of the body: the output of the events a read completed, merged.

        ``read_event`` parses one event and adds its output to the batch, returning a delta
        that must go out on its own first (an echoed prompt) or None. When an event is an
        error or unreadable, what the read held before it is handed over first, then the error
        is raised, so a broken stream is still relayed and billed up to where it broke.
        """
        batch = DeltaBatch()
        async with aclosing(events):
            async for events_read in events:
                deadline.started = True  # the upstream answered: only the total deadline counts
                for data in events_read:
                    try:
                        first = read_event(data, batch)
                    except (BackendError, *MALFORMED) as exc:
                        if (delivered := batch.take()) is not None:
                            yield delivered
                        if isinstance(exc, BackendError):
                            raise
                        raise UpstreamProtocolError(
                            "The backend sent an event the gateway cannot read.",
                            backend=self.name,
                            detail=f"{str(data)[:200]!r}",
                        ) from exc
                    if first is not None:
                        yield first
                if (delivered := batch.take()) is not None:
                    yield delivered

    async def _get(self, path_or_url: str) -> Fetched | None:
        """A probe GET bounded by the connect timeout; None when the upstream is unreachable."""
        url, proxy, proxy_headers = self._target(path_or_url)
        try:
            async with self._session().get(
                url,
                timeout=self._probe_timeout,
                allow_redirects=False,
                proxy=proxy,
                proxy_headers=proxy_headers,
            ) as response:
                body = await response.read()
                return Fetched(
                    response.status,
                    response.headers.get("content-type", ""),
                    body,
                    response.charset,
                )
        except TRANSPORT_ERRORS:
            return None

    async def _probe(self, health_path: str, load: LoadSnapshot | None) -> LoadSnapshot:
        """Health from ``health_path``; load from the metrics when they were read."""
        response = await self._get(health_path)
        if response is None:
            return LoadSnapshot(healthy=False, detail="unreachable")
        healthy = response.status == 200
        detail = "" if healthy else f"health answered {response.status}"
        if load is None:
            return LoadSnapshot(healthy=healthy, detail=detail)
        return LoadSnapshot(
            healthy=healthy,
            running=load.running,
            waiting=load.waiting,
            kv_usage=load.kv_usage,
            detail=detail or load.detail,
        )

    async def _metrics_text(self) -> tuple[str, str] | None:
        """The body and content type at ``metrics_url``, or None when not configured/readable."""
        if not self.metrics_url:
            return None
        response = await self._get(self.metrics_url)
        if response is None or response.status != 200:
            return None
        return response.text, response.content_type
