"""The SERVER span of one HTTP request (HTTP conventions), continuing the client's W3C trace."""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode
from starlette.types import Scope

from gateway.telemetry import semconv as sc

# Used directly, not through a global propagator: W3C trace context is the one format.
_PROPAGATOR = TraceContextTextMapPropagator()
_WANTED = frozenset({b"traceparent", b"tracestate", b"user-agent", b"host"})


class _HeaderGetter(Getter[dict[str, list[str]]]):
    def get(self, carrier: dict[str, list[str]], key: str) -> list[str] | None:
        return carrier.get(key)

    def keys(self, carrier: dict[str, list[str]]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def _headers(scope: Scope) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in scope["headers"]:
        if name in _WANTED:
            out.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
    return out


def start_server_span(tracer: Tracer, scope: Scope, request_id: str) -> Span:
    """A SERVER span for ``scope``, the child of an incoming ``traceparent`` when there is one."""
    headers = _headers(scope)
    parent: Context = _PROPAGATOR.extract(headers, getter=_GETTER)
    method = scope["method"]
    attributes = {
        sc.HTTP_REQUEST_METHOD: method,
        sc.URL_PATH: scope["path"],
        sc.URL_SCHEME: scope.get("scheme", "http"),
        sc.TOLLGATE_REQUEST_ID: request_id,
    }
    if "user-agent" in headers:
        attributes[sc.USER_AGENT_ORIGINAL] = headers["user-agent"][0]
    if "host" in headers:
        attributes[sc.SERVER_ADDRESS] = headers["host"][0].rsplit(":", 1)[0]
    client = scope.get("client")
    if client:
        attributes[sc.CLIENT_ADDRESS] = client[0]
    return tracer.start_span(method, context=parent, kind=SpanKind.SERVER, attributes=attributes)


def end_server_span(span: Span, scope: Scope, status: int, exc: BaseException | None) -> None:
    """Name the span by its route, record the status, and end it."""
    route = _route(scope)
    if route is not None:
        span.update_name(f"{scope['method']} {route}")
        span.set_attribute(sc.HTTP_ROUTE, route)
    span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, status)
    if exc is not None:
        span.record_exception(exc)
    # HTTP conventions: for a server, only 5xx is an error (4xx is the client's).
    if status >= 500:
        span.set_attribute(sc.ERROR_TYPE, str(status))
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def _route(scope: Scope) -> str | None:
    route = scope.get("route")
    path: object = getattr(route, "path", None)
    return path if isinstance(path, str) else None
