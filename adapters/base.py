"""The one interface every backend adapter implements, and the types it speaks.

Adapters import nothing from ``gateway``. Every adapter streams: ``generate`` yields
``Delta`` values and the gateway folds them into a non-streamed answer when asked.

Error tree (what the router understands)::

    BackendError
     ├── Overloaded(retry_after)   the upstream is full: try elsewhere, or later
     ├── Unavailable               the upstream is down or unreachable
     ├── Timeout                   connect, first-token or total deadline passed
     ├── BadRequest(param, code)   the request is at fault (the upstream refused it, or it
     │                             cannot fit): the client's error, never the backend's health
     └── UpstreamProtocolError     the upstream answered something we cannot read

``message`` is what a client may read; ``detail`` keeps what the upstream said (bodies,
tracebacks, addresses) for logs and spans only, and ``str(error)`` shows both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "tool_calls"]
BackendKind = Literal["vllm", "tgi", "triton", "jetstream", "embedded"]


class BackendError(Exception):
    """Base of every failure an adapter reports; ``backend`` names who failed."""

    def __init__(self, message: str, *, backend: str = "", detail: str | None = None) -> None:
        super().__init__(f"{message} [{detail}]" if detail else message)
        self.message = message
        self.backend = backend
        self.detail = detail


class Overloaded(BackendError):
    """The upstream refused for load (HTTP 429/503, gRPC RESOURCE_EXHAUSTED)."""

    def __init__(
        self,
        message: str,
        *,
        backend: str = "",
        retry_after: float = 1.0,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, backend=backend, detail=detail)
        self.retry_after = retry_after


class Unavailable(BackendError):
    """The upstream cannot be reached or says it is down."""


class Timeout(BackendError):
    """A connect, first-token or total deadline passed."""


class BadRequest(BackendError):
    """The request itself is at fault; retrying elsewhere will not help.

    ``code`` is OpenAI's error code when one applies (``context_length_exceeded``).
    """

    def __init__(
        self,
        message: str,
        *,
        backend: str = "",
        param: str | None = None,
        code: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, backend=backend, detail=detail)
        self.param = param
        self.code = code


class UpstreamProtocolError(BackendError):
    """The upstream answered with a body or stream we cannot parse."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend honours itself; the gateway filters candidates on these."""

    chat: bool = False  # accepts `messages` natively (else the gateway applies a template)
    token_prompts: bool = False  # accepts prompts given as token ids
    echo: bool = False  # can return prompt logprobs (text echo the gateway does itself)
    logprobs: int = 0  # the most top-logprobs it returns per token; 0 = none
    stop: bool = False  # applies stop sequences upstream (the gateway always enforces them too)
    max_stop_sequences: int | None = None
    seed: bool = False
    logit_bias: bool = False
    penalties: bool = False  # presence / frequency penalties
    suffix: bool = False
    tools: bool = False  # function calling: `tools`, `tool_choice`, tool calls in the answer
    structured: bool = False  # `response_format` json_object / json_schema (guided decoding)
    prefix_cache: bool = False  # reuses the KV of a prompt prefix it computed recently
    max_context: int | None = None  # prompt + completion tokens, when known
    max_prompt: int | None = None  # prompt tokens alone, where the server limits them apart


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the assistant made: ``arguments`` is the JSON text it wrote."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat turn with its text already flattened from content parts.

    An assistant turn may carry the ``tool_calls`` it made; a ``tool`` turn answers the call
    ``tool_call_id`` with ``content``.
    """

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(slots=True)
class GenerationRequest:
    """One generation (one prompt, one choice) as the gateway hands it to an adapter.

    ``model`` is already the upstream name. Exactly one of ``prompt``, ``prompt_token_ids``
    and ``messages`` is set; ``messages`` only for backends with ``Capabilities.chat``.
    Fields a backend cannot honour are never set to non-neutral values (routing ensures it).
    """

    request_id: str
    model: str
    max_tokens: int
    prompt: str | None = None
    prompt_token_ids: Sequence[int] | None = None
    messages: Sequence[ChatMessage] | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    seed: int | None = None
    logprobs: int | None = None  # number of top logprobs per output token
    echo: bool = False  # return prompt logprobs as a first `Delta` with ``echo=True``
    suffix: str | None = None
    logit_bias: Mapping[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # Function calling, as the client gave it (OpenAI's shapes, validated by the gateway):
    # ``tools`` are ``{"type": "function", "function": {...}}``; ``tool_choice`` is "auto",
    # "required" or ``{"type": "function", "function": {"name": ...}}`` (never "none": the
    # gateway then sends no tools at all).
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: str | Mapping[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {...}}``.
    response_format: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # vendor extras, passed through


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A token's text, its logprob (None for the first prompt token) and top alternatives."""

    token: str
    logprob: float | None
    top_logprobs: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the backend reports them; ``prompt_tokens=None`` when it reports none."""

    prompt_tokens: int | None
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: its first piece names it (``id``, ``name``), later
    pieces add to its ``arguments`` text. ``index`` tells the calls of one answer apart."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Delta:
    """A piece of a generation stream.

    ``tokens`` counts the completion tokens this piece carries (so a broken stream can be
    metered on what arrived). The last delta carries ``finish_reason`` and, where known,
    ``usage``. A delta with ``echo=True`` holds the prompt (text and logprobs), not output.
    """

    text: str = ""
    tokens: int = 0
    logprobs: Sequence[TokenLogprob] | None = None
    tool_calls: Sequence[ToolCallDelta] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    echo: bool = False


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """Health and load as a backend's own probe and metrics report them."""

    healthy: bool
    running: int | None = None  # requests being decoded
    waiting: int | None = None  # requests queued (incl. prefill backlog)
    kv_usage: float | None = None  # 0..1 share of KV cache or decode slots in use
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Deadlines in seconds for one upstream attempt."""

    connect: float = 5.0
    first_token: float = 60.0
    total: float = 600.0


@runtime_checkable
class Backend(Protocol):
    """An inference server Tollgate can send generations to."""

    name: str
    kind: str
    models: Mapping[str, str]  # client-facing model id -> upstream model name
    capabilities: Capabilities

    def generate(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream one generation; closing the iterator cancels it upstream."""
        ...

    async def probe(self) -> LoadSnapshot:
        """Check health and read load from the backend's own metrics."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads."""
        ...
