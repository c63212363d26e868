"""The gateway's error tree and the one table that turns every error into an HTTP answer.

    GatewayError
     ├── Unauthenticated        401 invalid_api_key
     ├── Forbidden              403 model_not_allowed
     ├── ModelNotFound          404 model_not_found
     ├── NotFound(param)        404 not_found (admin: no such tenant or key)
     ├── InvalidRequest(param)  400 invalid_request_error
     │    ├── ContextLengthExceeded  400 context_length_exceeded (prompt + completion too long)
     │    └── UnsupportedContentType 400 unsupported_content_type (a body that is not JSON)
     ├── BodyTooLarge           413
     ├── RateLimited            429 rate_limit_exceeded (+ retry-after)
     ├── QuotaExceeded          429 insufficient_quota (never retry-after)
     ├── StoreUnavailable       503 (the store is down and the policy is fail-closed)
     └── ClientDisconnected     499 (the client left before its answer was ready)

Backend errors (``adapters.base``) reach a client only after fallback is exhausted and
map as: Overloaded 503 + retry-after, Unavailable 503, Timeout 504,
UpstreamProtocolError 502, BadRequest 400 (with the upstream's OpenAI ``code``, if any).
Only a ``BackendError``'s ``message`` reaches a client, never its ``detail``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

from adapters.base import (
    BackendError,
    BadRequest,
    Overloaded,
    Timeout,
    Unavailable,
    UpstreamProtocolError,
)


class GatewayError(Exception):
    """An error the gateway answers with; see ``http_answer`` for its status."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class Unauthenticated(GatewayError):
    """Missing, malformed, unknown or revoked API key."""


class Forbidden(GatewayError):
    """The key is valid but may not use this model or endpoint."""


class ModelNotFound(GatewayError):
    """No configured model has this id or alias."""


class NotFound(GatewayError):
    """An admin call named a tenant or key that does not exist; ``param`` names which."""


class InvalidRequest(GatewayError):
    """The request body or a parameter is invalid; ``param`` names the field."""


class ContextLengthExceeded(InvalidRequest):
    """The prompt and the completion asked for do not fit the model's context on any backend."""


class UnsupportedContentType(InvalidRequest):
    """The body is declared as something other than ``application/json``."""


class BodyTooLarge(GatewayError):
    """The request body exceeds the configured limit."""


class RateLimited(GatewayError):
    """A request or token rate limit was hit; retrying after ``retry_after`` s helps."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceeded(GatewayError):
    """The tenant's budget is spent; retrying does not help."""


class StoreUnavailable(GatewayError):
    """The tenancy store cannot be reached and the failure policy is closed."""


class ClientDisconnected(GatewayError):
    """The client closed the connection before its answer was ready; nobody reads the reply."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """Status, OpenAI error ``type`` and ``code`` for one error class."""

    status: int
    type: str
    code: str | None


# The one table. Order matters only for subclasses (first match wins).
_TABLE: tuple[tuple[type[Exception], HttpAnswer], ...] = (
    (Unauthenticated, HttpAnswer(401, "invalid_request_error", "invalid_api_key")),
    (Forbidden, HttpAnswer(403, "invalid_request_error", "model_not_allowed")),
    (ModelNotFound, HttpAnswer(404, "invalid_request_error", "model_not_found")),
    (NotFound, HttpAnswer(404, "invalid_request_error", "not_found")),
    (ContextLengthExceeded, HttpAnswer(400, "invalid_request_error", "context_length_exceeded")),
    (UnsupportedContentType, HttpAnswer(400, "invalid_request_error", "unsupported_content_type")),
    (InvalidRequest, HttpAnswer(400, "invalid_request_error", None)),
    (BodyTooLarge, HttpAnswer(413, "invalid_request_error", "request_too_large")),
    (RateLimited, HttpAnswer(429, "requests", "rate_limit_exceeded")),
    (QuotaExceeded, HttpAnswer(429, "insufficient_quota", "insufficient_quota")),
    (StoreUnavailable, HttpAnswer(503, "server_error", "store_unavailable")),
    (ClientDisconnected, HttpAnswer(499, "invalid_request_error", "client_closed_request")),
    (Overloaded, HttpAnswer(503, "server_error", "backend_overloaded")),
    (Unavailable, HttpAnswer(503, "server_error", "backend_unavailable")),
    (Timeout, HttpAnswer(504, "server_error", "backend_timeout")),
    (UpstreamProtocolError, HttpAnswer(502, "server_error", "bad_upstream_response")),
    (BadRequest, HttpAnswer(400, "invalid_request_error", None)),
)
_INTERNAL = HttpAnswer(500, "server_error", "internal_error")


def http_answer(exc: BaseException) -> HttpAnswer:
    """The status and OpenAI error type/code for ``exc`` (500 for anything unexpected)."""
    for cls, answer in _TABLE:
        if isinstance(exc, cls):
            return answer
    return _INTERNAL


def retry_after(exc: BaseException) -> int | None:
    """Seconds for a ``retry-after`` header, for the errors where retrying helps."""
    if isinstance(exc, RateLimited | Overloaded):
        return max(1, math.ceil(exc.retry_after))
    return None


def should_retry(exc: BaseException) -> bool | None:
    """What the ``x-should-retry`` header says, where the SDKs' own rule would be wrong.

    The OpenAI SDKs retry every 429 unless told not to; a spent budget stays spent.
    """
    if isinstance(exc, QuotaExceeded):
        return False
    return None


def error_body(exc: BaseException) -> dict[str, dict[str, str | None]]:
    """OpenAI's error envelope for ``exc``; never a stack trace."""
    answer = http_answer(exc)
    if isinstance(exc, GatewayError | BackendError):
        message = exc.message
    else:
        message = "The server had an error while processing your request."
    param = exc.param if isinstance(exc, GatewayError | BadRequest) else None
    code = exc.code if isinstance(exc, BadRequest) and exc.code else answer.code
    return {"error": {"message": message, "type": answer.type, "param": param, "code": code}}


def error_json(exc: BaseException) -> bytes:
    """The envelope serialised, for HTTP bodies and SSE error events."""
    return orjson.dumps(error_body(exc))
