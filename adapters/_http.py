"""What the HTTP adapters share: the client, deadlines on a streamed POST, and error mapping.

Every upstream answer passes through ``status_error`` or ``transport_error`` on its way to
the router, so the HTTP adapters agree on one table:

    429, 503            Overloaded (retry_after from ``Retry-After`` when present)
    400, 404, 413, 422  BadRequest (param from the body when it names one)
    408, 504            Timeout
    401, 403, 424, 5xx  Unavailable (credentials, generation failures, crashes: try elsewhere)
    connect failures    Unavailable; connect timeout: Timeout; broken bodies: UpstreamProtocolError
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from adapters._deadline import Deadline
from adapters._sse import sse_data
from adapters.base import (
    BackendError,
    BadRequest,
    Capabilities,
    LoadSnapshot,
    Overloaded,
    Timeout,
    Timeouts,
    Unavailable,
    UpstreamProtocolError,
)

JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}
SSE_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}
DEFAULT_RETRY_AFTER = 1.0
DEFAULT_TIMEOUTS = Timeouts()


def tls_verify(ca_file: str | None, insecure: bool) -> ssl.SSLContext | bool:
    """An ``httpx`` verify value: system roots, a private CA, or (explicitly) no checks."""
    if insecure:
        return False
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return True


def build_client(
    url: str,
    timeouts: Timeouts,
    *,
    api_key: str | None,
    tls_ca_file: str | None,
    tls_insecure: bool,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """One pooled client per backend; reads are bounded by our own deadlines, not httpx's."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        base_url=url.rstrip("/"),
        headers=headers,
        verify=tls_verify(tls_ca_file, tls_insecure),
        timeout=httpx.Timeout(timeouts.total, connect=timeouts.connect, pool=timeouts.connect),
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
        ),
        transport=transport,
        follow_redirects=False,
    )


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), if usable."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_detail(raw: bytes) -> tuple[str, str | None]:
    """Message and param from any error body we know: OpenAI nested, vLLM's old flat one,
    trtllm-serve / Triton / TGI ``{"error": "..."}``; otherwise the text itself."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:500].decode("utf-8", "replace").strip() or "(empty body)", None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error), _param(error.get("param"))
        if isinstance(error, str):
            return error, _param(body.get("param"))
        if "message" in body:
            return str(body["message"]), _param(body.get("param"))
    return str(body)[:500], None


def _param(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def status_error(status: int, headers: httpx.Headers, raw: bytes, backend: str) -> BackendError:
    """The taxonomy's error for an HTTP error status and its body."""
    message, param = error_detail(raw)
    message = f"upstream {status}: {message}"
    if status in (429, 503):
        return Overloaded(
            message,
            backend=backend,
            retry_after=retry_after(headers) or DEFAULT_RETRY_AFTER,
        )
    if status in (408, 504):
        return Timeout(message, backend=backend)
    if status in (401, 403, 424) or status >= 500:
        return Unavailable(message, backend=backend)
    return BadRequest(message, backend=backend, param=param)


def code_error(code: object, message: str, backend: str) -> BackendError:
    """The error for an ``{"error": ...}`` event inside a 200 stream, by its code if any."""
    status = code if isinstance(code, int) else 500
    return status_error(status, httpx.Headers(), orjson.dumps({"error": message}), backend)


def transport_error(exc: httpx.HTTPError, backend: str) -> BackendError:
    """The error for a failure below HTTP: refused, reset, timed out or truncated."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return Timeout(f"connect timed out: {exc!r}", backend=backend)
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"upstream timed out: {exc!r}", backend=backend)
    if isinstance(exc, httpx.ConnectError):
        return Unavailable(f"cannot connect: {exc}", backend=backend)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError | httpx.ReadError):
        return UpstreamProtocolError(f"broken upstream response: {exc!r}", backend=backend)
    return Unavailable(f"transport failure: {exc!r}", backend=backend)


def loads(data: str | bytes, backend: str) -> Any:
    """Parse JSON from the upstream; anything unreadable is a protocol error."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(
            f"upstream sent invalid JSON: {str(data)[:200]!r}", backend=backend
        ) from exc


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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.models = dict(models)
        self.timeouts = timeouts
        self.metrics_url = metrics_url
        self.options: Mapping[str, Any] = dict(options or {})
        self._client = build_client(
            self.url,
            timeouts,
            api_key=api_key,
            tls_ca_file=tls_ca_file,
            tls_insecure=tls_insecure,
            max_connections=int(self.options.get("max_connections", 256)),
            transport=transport,
        )
        self.capabilities = self._configure(self.options)

    def _configure(self, options: Mapping[str, Any]) -> Capabilities:
        """Read the adapter's own options; say what the upstream can honour."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()

    @asynccontextmanager
    async def _post(
        self, path: str, body: Mapping[str, Any], deadline: Deadline, *, stream: bool
    ) -> AsyncIterator[httpx.Response]:
        """POST ``body``; yields the open response once its status is known to be good."""
        request = self._client.build_request(
            "POST",
            path,
            content=orjson.dumps(body),
            headers=SSE_HEADERS if stream else JSON_HEADERS,
        )
        try:
            response = await deadline.run(self._client.send(request, stream=True))
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.name) from exc
        try:
            if response.status_code >= 400:
                raw = await self._read(response, deadline)
                raise status_error(response.status_code, response.headers, raw, self.name)
            yield response
        finally:
            # Closing before the body ends drops the connection: that is what tells the
            # upstream to stop generating when our client went away.
            await response.aclose()

    async def _read(self, response: httpx.Response, deadline: Deadline) -> bytes:
        try:
            return await deadline.run(response.aread())
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.name) from exc

    async def _post_json(self, path: str, body: Mapping[str, Any], deadline: Deadline) -> Any:
        """POST and parse a whole JSON answer."""
        async with self._post(path, body, deadline, stream=False) as response:
            return loads(await self._read(response, deadline), self.name)

    async def _events(
        self, path: str, body: Mapping[str, Any], deadline: Deadline
    ) -> AsyncGenerator[str, None]:
        """POST and yield the data of each server-sent event, each within the deadline."""
        async with self._post(path, body, deadline, stream=True) as response:
            events = sse_data(response.aiter_lines())
            try:
                while True:
                    try:
                        data = await deadline.run(anext(events))
                    except StopAsyncIteration:
                        return
                    yield data
            except httpx.HTTPError as exc:
                raise transport_error(exc, self.name) from exc
            finally:
                await events.aclose()

    async def _get(self, url: str) -> httpx.Response | None:
        """A probe GET bounded by the connect timeout; None when the upstream is unreachable."""
        try:
            return await self._client.get(url, timeout=self.timeouts.connect)
        except httpx.HTTPError:
            return None

    async def _probe(self, health_path: str, load: LoadSnapshot | None) -> LoadSnapshot:
        """Health from ``health_path``; load from the metrics when they were read."""
        response = await self._get(health_path)
        if response is None:
            return LoadSnapshot(healthy=False, detail="unreachable")
        healthy = response.status_code == 200
        detail = "" if healthy else f"health answered {response.status_code}"
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
        if response is None or response.status_code != 200:
            return None
        return response.text, response.headers.get("content-type", "")
