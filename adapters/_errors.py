"""What an upstream's error answer means, and what of it a client may read.

One table for every HTTP adapter (an in-stream error event is classed as its HTTP twin):

    429, 503              Overloaded (retry_after from ``Retry-After`` when present)
    400, 404, 413, 422... BadRequest: the client's error, with the upstream's message, param
                          and OpenAI code, cleaned of server internals
    408, 504              Timeout
    401, 403              Unavailable (the gateway's credentials, not the client's)
    424, 5xx              Unavailable, the upstream's words kept for logs only; but a 500 that
                          wraps FastAPI's request validation (llama-cpp-python answers a bad
                          field that way) is the client's error, a BadRequest naming the field

A client reads ``message``; the upstream's own text goes to ``detail`` (logs, spans).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import orjson

from adapters.base import BackendError, BadRequest, Overloaded, Timeout, Unavailable

DEFAULT_RETRY_AFTER = 1.0
MAX_CLIENT_TEXT = 300  # characters of an upstream's refusal a client gets to read
# Where a server's internals show in its messages: traceback lines, source paths, deep paths.
_INTERNALS = re.compile(
    r'Traceback \(most recent call last\):'
    r'|\s*File "[^"]*"(?:, line \d+)?(?:, (?:in|function) \S+)?'
    r"|(?:[A-Za-z]:)?(?:[/\\][\w.@+-]+){3,}"
    r"|(?:[/\\][\w.@+-]+)+\.(?:py|pyc|rs|cc|cpp|cu|h|so|go|java)\b(?::\d+)?"
)
# FastAPI's request validation error, as ``str()`` renders it inside a 500 body.
_VALIDATION = re.compile(r"'loc': \('body', '([^']+)'[^}]*?'msg': ['\"]([^'\"]*)['\"]")
# OpenAI error ``type``s (and vLLM's class names) that mean the request was at fault.
_CLIENT_TYPES = frozenset({"invalid_request_error", "BadRequestError", "NotFoundError"})


@dataclass(frozen=True, slots=True)
class UpstreamSaid:
    """An upstream's error body read: its message, and the param and code it names."""

    message: str
    param: str | None = None
    code: str | None = None
    type: str | None = None


def read_error(raw: bytes) -> UpstreamSaid:
    """Any error body we know: OpenAI nested, vLLM's old flat one, trtllm-serve's flat one,
    Triton / TGI ``{"error": "..."}``; otherwise the text itself."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return UpstreamSaid(raw[:500].decode("utf-8", "replace").strip() or "(empty body)")
    return said_in(body)


def said_in(body: object) -> UpstreamSaid:
    """What an error body already parsed (or an in-stream error event) says."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return _said(error.get("message") or error, error)
        if isinstance(error, str):
            return _said(error, body)
        if "message" in body:
            return _said(body["message"], body)
    return UpstreamSaid(str(body)[:500])


def _said(message: object, fields: Mapping[str, object]) -> UpstreamSaid:
    code, kind = fields.get("code"), fields.get("type")
    return UpstreamSaid(
        str(message),
        _text(fields.get("param")),
        _text(code),
        _text(kind) or _text(fields.get("error_type")),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def client_text(message: str) -> str:
    """An upstream's refusal as a client may read it: no tracebacks, paths, or walls of text."""
    text = " ".join(_INTERNALS.sub(" ", message).split())
    if len(text) > MAX_CLIENT_TEXT:
        text = text[: MAX_CLIENT_TEXT - 1].rstrip() + "…"
    return text or "The backend refused the request."


def retry_after(headers: Mapping[str, str]) -> float | None:
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


def status_error(status: int, headers: Mapping[str, str], raw: bytes, backend: str) -> BackendError:
    """The taxonomy's error for an HTTP error status and its body."""
    return said_error(status, read_error(raw), backend, headers)


def said_error(
    status: int, said: UpstreamSaid, backend: str, headers: Mapping[str, str] | None = None
) -> BackendError:
    """The taxonomy's error for what an upstream said with (or as if with) ``status``."""
    detail = f"upstream {status}: {said.message}"
    if status in (429, 503):
        wait = retry_after(headers or {}) or DEFAULT_RETRY_AFTER
        return Overloaded(
            "The backend is overloaded.", backend=backend, retry_after=wait, detail=detail
        )
    if status in (408, 504):
        return Timeout("The backend timed out.", backend=backend, detail=detail)
    if status in (401, 403):
        return Unavailable(
            "The backend refused the gateway's credentials.", backend=backend, detail=detail
        )
    if status == 424 or status >= 500:
        invalid = _VALIDATION.search(said.message)
        if invalid is not None:  # a framework's request validation, surfaced as a crash
            field, why = invalid.groups()
            return BadRequest(
                f"Invalid value for '{field}': {client_text(why)}.",
                backend=backend,
                param=field,
                detail=detail,
            )
        return Unavailable(f"The backend failed (HTTP {status}).", backend=backend, detail=detail)
    return BadRequest(
        client_text(said.message), backend=backend, param=said.param, code=said.code, detail=detail
    )


def event_error(said: UpstreamSaid, backend: str, status: object = None) -> BackendError:
    """An error event inside a 200 stream, classed by its status when it gives one, else by
    its type: the request's fault when the type says so, the backend's otherwise."""
    if isinstance(status, int) and status >= 400:
        return said_error(status, said, backend)
    return said_error(400 if said.type in _CLIENT_TYPES else 500, said, backend)
