"""One generation in flight: the backend chosen for it, its stream, and what arrived.

A ``Generation`` is opened by ``open_generation`` (which falls back across the ranked
backends until one yields its first delta, giving up early on a first token far later than
predicted while another backend remains) and then read with ``pieces``, which applies
gateway-side stop sequences, ends a stream silent for ``inter_token_s``, and counts what the
backend delivered for metering.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry.trace import INVALID_SPAN, Span

from adapters.base import (
    Backend,
    BackendError,
    BadRequest,
    Delta,
    FinishReason,
    GenerationRequest,
    Timeout,
    TokenLogprob,
    ToolCallDelta,
    Unavailable,
    Usage,
)
from gateway.openai.responses import Endpoint
from gateway.openai.silence import Silence, SilenceWatch
from gateway.openai.streaming import StopMatcher
from gateway.routing.policies import Estimate
from gateway.routing.prefixes import PromptBlocks
from gateway.routing.router import Router
from gateway.telemetry import Telemetry

_NO_TELEMETRY = Telemetry()  # no providers: every call is a no-op
# A first token this many times later than predicted (and later than the backend's
# ``give_up_floor_s``) is given up on while another backend remains to try.
GIVE_UP_FACTOR = 8.0


@dataclass(slots=True)
class Piece:
    """Text (and logprobs) ready for the client, after stop handling."""

    text: str
    logprobs: Sequence[TokenLogprob] | None = None
    echo: bool = False
    tool_calls: Sequence[ToolCallDelta] | None = None


@dataclass(slots=True)
class Generation:
    """A started generation; ``index`` is its choice index in the response."""

    index: int
    backend: Backend
    stream: AsyncIterator[Delta]
    first: Delta | None
    stops: Sequence[str]
    opened_at: float
    first_at: float
    attempt_at: float  # when the attempt that serves it started (monotonic)
    fallbacks: int = 0
    completion_tokens: int = 0
    usage: Usage | None = None
    finish_reason: FinishReason | None = None
    error: BaseException | None = None
    ended_at: float = 0.0
    span: Span = INVALID_SPAN  # the attempt's CLIENT span, ended when the request settles
    transcript: list[str] | None = None  # output text, kept only when content is recorded
    inter_token_s: float | None = None  # the longest wait for the next delta (None: no limit)
    _matcher: StopMatcher | None = field(default=None, init=False)
    _watch: SilenceWatch | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.stops:
            self._matcher = StopMatcher(self.stops)

    @property
    def ttft_s(self) -> float:
        """Seconds from the first attempt to the first delta."""
        return self.first_at - self.opened_at

    @property
    def output_tokens(self) -> int:
        """Tokens to bill: the backend's count for a completed stream, else what arrived."""
        completed = self.error is None and self.finish_reason is not None
        cut_short = self._matcher is not None and self._matcher.stopped
        if self.usage is not None and completed and not cut_short:
            return self.usage.completion_tokens
        return self.completion_tokens

    async def pieces(self) -> AsyncIterator[Piece]:
        """The generation's output; sets ``finish_reason`` (or ``error``) when done."""
        delta = self.first
        self.first = None
        try:
            while delta is not None:
                piece = self._take(delta)
                if piece is not None:
                    yield piece
                if self.finish_reason is not None:
                    if delta.finish_reason is not None:
                        await self._drain()
                    return
                delta = await self._next()
            self.finish_reason = "stop"  # a stream that simply ends has finished
            if self._matcher is not None and (tail := self._matcher.flush()):
                yield Piece(tail)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.ended_at = time.monotonic()
            if self._watch is not None:
                self._watch.close()
            await close_stream(self.stream)  # cancels upstream when we stop early

    async def abandon(self, reason: BaseException) -> None:
        """Stop a generation whose output will not be read: cancel it upstream, and count
        what had already arrived (the first delta) so that it is still metered."""
        if self.first is not None:
            self._take(self.first)
            self.first = None
        if self.error is None and self.finish_reason is None:
            self.error = reason
        self.ended_at = self.ended_at or time.monotonic()
        await close_stream(self.stream)

    async def _next(self) -> Delta | None:
        """The next delta, or None at the stream's end; ``Timeout`` after ``inter_token_s``
        of silence (only the wait is timed, never the consumer's handling of a delta)."""
        limit = self.inter_token_s
        if limit is None:
            return await anext(self.stream, None)
        if self._watch is None:
            self._watch = SilenceWatch(limit)
        try:
            return await self._watch.wait(anext(self.stream, None))
        except Silence:
            raise Timeout(
                f"the backend sent nothing for {limit:g} s in the middle of the answer",
                backend=self.backend.name,
            ) from None

    async def _drain(self) -> None:
        # The backend finished on its own: read its stream to the end (trailing usage,
        # ``[DONE]``) so the upstream connection goes back to the pool instead of being
        # dropped, which would cost a new TCP connection on the next request. A tail that
        # stalls costs only that connection: the answer is already whole.
        try:
            while (delta := await self._next()) is not None:
                if delta.usage is not None:
                    self.usage = delta.usage
        except Timeout:
            return

    def _take(self, delta: Delta) -> Piece | None:
        if delta.echo:
            return Piece(delta.text, delta.logprobs, echo=True)
        self.completion_tokens += delta.tokens
        if delta.usage is not None:
            self.usage = delta.usage
        text = delta.text
        if self._matcher is not None:
            text = self._matcher.feed(text)
            if self._matcher.stopped:
                self.finish_reason = "stop"
            elif delta.finish_reason is not None:
                text += self._matcher.flush()
                if self._matcher.stopped:
                    self.finish_reason = "stop"
        if delta.finish_reason is not None and self.finish_reason is None:
            self.finish_reason = delta.finish_reason
        if self.transcript is not None and text:
            self.transcript.append(text)
        if text or delta.logprobs or delta.tool_calls:
            return Piece(text, delta.logprobs, tool_calls=delta.tool_calls)
        return None


async def close_stream(stream: AsyncIterator[Delta]) -> None:
    """Close an adapter's stream, which cancels the upstream request."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def open_generation(
    index: int,
    plan: Sequence[Estimate],
    router: Router,
    build: Callable[[Backend], tuple[GenerationRequest, Sequence[str]]],
    deadline: float,
    *,
    telemetry: Telemetry = _NO_TELEMETRY,
    policy: str = "",
    endpoint: Endpoint = "completion",
    tried: int = 0,
    opened_at: float | None = None,
    prompt: PromptBlocks | None = None,
) -> Generation:
    """Try the ranked backends ``plan[tried:]`` in turn until one yields its first delta.

    Falls back on any backend error but ``BadRequest``, while the retry budget and the
    request's ``deadline`` allow; a first-token timeout is such an error. While another
    backend remains, an attempt is given up after ``GIVE_UP_FACTOR`` x its predicted TTFT
    (at least the backend's ``give_up_floor_s``). Raises the last error when every attempt
    failed. ``tried``/``opened_at`` continue the walk of an earlier call (a restart).
    ``prompt`` tells the router which prefix each attempted backend now holds.
    ``policy`` and ``endpoint`` (the client's) label the attempts' telemetry.
    """
    opened = time.monotonic() if opened_at is None else opened_at
    last: BackendError | None = None
    for attempt in range(tried, len(plan)):
        if attempt and (not router.may_retry() or time.monotonic() >= deadline):
            break
        est = plan[attempt]
        backend = est.backend
        request, stops = build(backend)
        router.attempt_started(backend.name, retry=attempt > 0, prompt=prompt)
        started = time.monotonic()
        patience, giving_up = _patience(est, router, deadline, started, attempt + 1 < len(plan))
        span = telemetry.start_attempt(backend, request, attempt, index, endpoint)
        stream = backend.generate(request)
        try:
            with telemetry.current(span):  # the HTTP/gRPC client's spans nest under it
                first = await _first_delta(stream, patience)
        except _Overdue:
            waited = time.monotonic() - started
            last = Timeout(
                f"no first token after {waited:.1f} s (predicted {est.ttft_s:.2f} s)"
                if giving_up
                else "the request's deadline passed before a first token",
                backend=backend.name,
            )
            telemetry.attempt_failed(
                span, backend, last, policy, endpoint=endpoint, model=request.model, started=started
            )
            await close_stream(stream)
            if giving_up:
                router.attempt_abandoned(backend.name, waited)
            else:
                router.attempt_failed(backend.name, last)
            continue
        except BackendError as exc:
            telemetry.attempt_failed(
                span, backend, exc, policy, endpoint=endpoint, model=request.model, started=started
            )
            router.attempt_failed(backend.name, exc)
            await close_stream(stream)
            if isinstance(exc, BadRequest):
                raise
            last = exc
            continue
        except BaseException as exc:
            telemetry.attempt_failed(
                span, backend, exc, policy, endpoint=endpoint, model=request.model, started=started
            )
            await close_stream(stream)
            router.finished(backend.name, ok=False, output_tokens=0, decode_s=0.0)
            raise
        now = time.monotonic()
        router.first_token(backend.name, now - started)
        return Generation(
            index=index,
            backend=backend,
            stream=stream,
            first=first if first is not None else Delta(finish_reason="stop"),
            stops=stops,
            opened_at=opened,
            first_at=now,
            attempt_at=started,
            fallbacks=attempt,
            span=span,
            transcript=[] if telemetry.record_content else None,
            inter_token_s=router.timeouts(backend.name).inter_token_s,
        )
    if last is not None:
        raise last
    raise Unavailable("Every backend for this model is unavailable right now (circuit open).")


class _Overdue(Exception):
    """The wait for a first token ran past the attempt's patience."""


def _patience(
    est: Estimate, router: Router, deadline: float, now: float, more: bool
) -> tuple[float | None, bool]:
    """How long to wait for this attempt's first token, and whether that is giving up early.

    The backend's own ``first_token_s`` applies inside its adapter in any case.
    """
    left = deadline - now
    if more and router.may_retry():
        floor = router.timeouts(est.backend.name).give_up_floor_s
        give_up = max(GIVE_UP_FACTOR * est.ttft_s, floor)
        if give_up < left:
            return give_up, True
    return (None if math.isinf(left) else max(0.0, left)), False


async def _first_delta(stream: AsyncIterator[Delta], patience: float | None) -> Delta | None:
    if patience is None:
        return await anext(stream, None)
    try:
        async with asyncio.timeout(patience) as scope:
            return await anext(stream, None)
    except TimeoutError:
        if scope.expired():
            raise _Overdue from None
        raise
