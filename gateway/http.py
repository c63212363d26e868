"""HTTP plumbing: request identity and access log (one ASGI middleware), bodies, errors.

Every answer carries ``x-request-id`` (the client's if it sent a sane one) and every error
is OpenAI's envelope; nothing here logs a key or a prompt.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from opentelemetry import context, trace
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.base import BackendError
from gateway.deps import bearer_token
from gateway.errors import (
    BodyTooLarge,
    GatewayError,
    InvalidRequest,
    Unauthenticated,
    UnsupportedContentType,
    error_body,
    error_json,
    http_answer,
    retry_after,
    should_retry,
)
from gateway.openai.disconnect import disconnect_of
from gateway.openai.serving import RequestMeta
from gateway.routing.policies import Objectives
from gateway.state import AppState
from gateway.telemetry import Telemetry
from gateway.telemetry.server_span import end_server_span, start_server_span
from gateway.tenancy.keys import unique_hex

access_log = logging.getLogger("tollgate.access")
log = logging.getLogger("tollgate.http")
_MAX_CLIENT_ID = 128
# Scraped and probed every few seconds: spans for them would only be noise.
_UNTRACED = frozenset({"/metrics", "/healthz", "/readyz"})


class ORJSONResponse(Response):
    """JSON rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Serialise ``content``."""
        return orjson.dumps(content)


def error_response(exc: BaseException) -> Response:
    """The HTTP answer for any exception: status, envelope, retry-after where it helps."""
    headers = {}
    seconds = retry_after(exc)
    if seconds is not None:
        headers["retry-after"] = str(seconds)
    retry = should_retry(exc)
    if retry is not None:
        headers["x-should-retry"] = "true" if retry else "false"
    return Response(error_json(exc), http_answer(exc).status, headers, "application/json")


def request_meta(request: Request) -> RequestMeta:
    """The request's identity and routing overrides (set up by ``RequestContext``)."""
    meta: RequestMeta = request.state.meta
    headers = request.headers
    meta.policy = headers.get("x-tollgate-policy")
    ttft = _millis(headers.get("x-tollgate-max-ttft-ms"), "x-tollgate-max-ttft-ms")
    tpot = _millis(headers.get("x-tollgate-max-tpot-ms"), "x-tollgate-max-tpot-ms")
    if ttft is not None or tpot is not None:
        meta.objectives = Objectives(ttft, tpot)
    meta.client_left = disconnect_of(request.receive)
    return meta


def require_json(request: Request) -> None:
    """Refuse a body declared as anything but UTF-8 JSON; one declared as nothing is read as
    JSON. OpenAI answers the same 400 ``unsupported_content_type``."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media, *params = (part.strip().lower() for part in declared.split(";"))
    charsets = {p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")}
    if media == "application/json" and charsets <= {"utf-8", "utf8"}:
        return
    shown = declared[:100] if declared.isprintable() else "(unprintable)"
    raise UnsupportedContentType(
        f"Unsupported content type: '{shown}'. This endpoint accepts only 'application/json' "
        "bodies; send the header 'Content-Type: application/json'."
    )


def _millis(value: str | None, header: str) -> float | None:
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not ms > 0 or ms == float("inf"):
        raise InvalidRequest(f"{header} must be a positive number of milliseconds.", param=header)
    return ms / 1000


async def read_body(request: Request, state: AppState) -> bytes:
    """The body, refused with 413 past the configured limit without reading it all."""
    limit = state.settings.server.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The request body exceeds the limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"The request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


class RequestContext:
    """Assigns request ids, echoes ``x-request-id``, writes one JSON access-log line.

    Also the last line of defence: an unexpected exception becomes a 500 envelope, never a
    stack trace, with the request id still attached.

    ``direct`` routes (the generation endpoints) are served from here without the layers
    below (exception middleware, exit stack, router, FastAPI's endpoint wrapper): they answer
    their own errors in the same envelope, and a gateway is judged by these routes' overhead.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        log_access: bool = True,
        telemetry: Telemetry | None = None,
        direct: Sequence[Route] = (),
    ) -> None:
        self.app = app
        self.log_access = log_access
        self.telemetry = telemetry or Telemetry()
        self._direct = {
            route.path: route for route in direct if route.methods and "POST" in route.methods
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_id = _client_request_id(scope)
        meta = RequestMeta(request_id=unique_hex(), client_request_id=client_id)
        scope.setdefault("state", {})["meta"] = meta
        echo = (client_id or meta.request_id).encode()
        status = 0
        started = time.perf_counter()
        span, token = None, None
        failure: Exception | None = None
        if self.telemetry.tracing and scope["path"] not in _UNTRACED:
            span = meta.span = start_server_span(self.telemetry.tracer, scope, meta.request_id)
            token = context.attach(trace.set_span_in_context(span))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", echo)]
            await send(message)

        try:
            route = self._direct.get(scope["path"]) if scope["method"] == "POST" else None
            if route is None:
                receive = _guard(scope, receive)
                await self.app(scope, receive, send_with_id)
            else:
                scope["route"] = route
                await _serve_direct(route, scope, receive, send_with_id)
        except GatewayError as exc:  # refused by the guard before any route ran
            failure = exc
            if status:
                raise
            await error_response(exc)(scope, receive, send_with_id)
        except Exception as exc:
            failure = exc
            log.exception("unhandled error on %s", scope.get("path"))
            if status:
                raise
            await error_response(exc)(scope, receive, send_with_id)
        finally:
            if span is not None and token is not None:
                end_server_span(span, scope, status or 499, failure)
                context.detach(token)
            if self.log_access:
                _log_access(scope, meta, status or 499, time.perf_counter() - started)


def _guard(scope: Scope, receive: Receive) -> Receive:
    """What every routed request passes before its body is read.

    ``/admin`` answers 401 to anyone without the admin key before a byte of the body is read
    or parsed, and every body is cut off at ``max_body_bytes`` (413) as it arrives: an
    unauthenticated 100 MB upload costs the gateway nothing.
    """
    state = getattr(getattr(scope.get("app"), "state", None), "tollgate", None)
    if state is None:
        return receive
    if scope["path"].startswith("/admin"):
        secret = bearer_token(Request(scope))
        if not hmac.compare_digest(secret.encode(), state.admin_key.encode()):
            raise Unauthenticated("This endpoint needs the admin key.")
    limit = state.settings.server.max_body_bytes
    declared = Headers(scope=scope).get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The request body exceeds the limit of {limit} bytes.")
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:  # raised inside the framework's body reading: an HTTP error it keeps
            raise HTTPException(413, f"The request body exceeds the limit of {limit} bytes.")
        return message

    return limited


async def _serve_direct(route: Route, scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive, send)
    try:
        response: Response = await route.endpoint(request)
    except (GatewayError, BackendError) as exc:
        response = error_response(exc)
    await response(scope, receive, send)


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if 0 < len(text) <= _MAX_CLIENT_ID and text.isprintable():
                return text
            return None
    return None


def _log_access(scope: Scope, meta: RequestMeta, status: int, seconds: float) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    line = {
        "ts": round(time.time(), 3),
        "request_id": meta.request_id,
        "client_request_id": meta.client_request_id,
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "tenant": meta.tenant,
        "model": meta.model,
        "backend": meta.backend,
        "prompt_tokens": meta.prompt_tokens,
        "completion_tokens": meta.completion_tokens,
        "cost_usd": round(meta.cost_usd, 10),
        "duration_ms": round(seconds * 1000, 3),
    }
    access_log.info(orjson.dumps(line).decode())


def _unknown_endpoint(method: str, path: str) -> str:
    """What a 404 for no route says: the endpoint, and the likely mistake in the base URL."""
    message = f"Unknown endpoint: {method} {path}."
    if path.startswith("/v1/v1/"):
        message += " The base URL already ends in /v1: give it once."
    elif path.rstrip("/") == "/v1":
        message += " /v1 is the base URL: append an endpoint such as /v1/chat/completions."
    elif not path.startswith("/v1/") and path.lstrip("/").split("/")[0] in _V1_ROOTS:
        message += f" Did you mean /v1{path}?"
    return message


_V1_ROOTS = frozenset({"chat", "completions", "models", "usage", "responses", "embeddings"})


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app can raise, answered in OpenAI's envelope."""

    async def domain(_: Request, exc: Exception) -> Response:
        return error_response(exc)

    async def validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        return error_response(InvalidRequest(f"Invalid request: {first['msg']}.", param=param))

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = _unknown_endpoint(request.method, request.url.path)
        body = error_body(InvalidRequest(message))
        body["error"]["code"] = {404: "not_found", 405: "method_not_allowed",
                                 413: "request_too_large"}.get(exc.status_code)
        return Response(orjson.dumps(body), exc.status_code, exc.headers, "application/json")

    app.add_exception_handler(GatewayError, domain)
    app.add_exception_handler(BackendError, domain)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http)
