"""Continuous batching: a batch-loop thread that prefills, inserts and steps all decode slots.

Callers submit from any thread (``submit``) or await an ``AsyncStream`` from asyncio; results
come back as ``Chunk`` values. Closing a stream cancels its request and frees its slot at once.
A request with a ``Constraint`` shares the batch: its slot's tokens are masked each step.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Literal

import numpy as np

from engine.config import EngineConfig
from engine.constraints import ConstrainedAnswer, Constraint, GrammarVocabulary, compile_grammar
from engine.detokenize import TextAssembler
from engine.engine import (
    DecodeState,
    GemmaEngine,
    PrefillJob,
    Prefix,
    SlotSampling,
    StepOutput,
    seed_key,
)
from engine.errors import EngineClosed, EngineError, PromptTooLong, QueueFull
from engine.tokenizer import GemmaTokenizer

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationParams:
    """Per-request generation settings (OpenAI's, plus ``top_k`` and ``constraint``).

    A constrained answer ends with "stop" once its grammar is complete, and may end on a stop
    token only where the grammar accepts; stop strings still cut it. Its logprobs are those of
    the masked distribution (disallowed tokens never appear among the alternatives).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: int | None = None  # top alternatives per output token; None = no logprobs
    prompt_logprobs: int | None = None  # same for prompt tokens (``echo`` with logprobs)
    stop_token_ids: tuple[int, ...] | None = None  # None = the tokenizer's EOS and <end_of_turn>
    constraint: Constraint | None = None  # what the answer must be (JSON); None = free text


@dataclass(frozen=True)
class TokenInfo:
    """One token with its text, logprob (None for the first prompt token) and alternatives."""

    token_id: int
    text: str
    logprob: float | None
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass(frozen=True)
class Chunk:
    """A piece of one choice's output; the last one of a choice has ``finish_reason``."""

    index: int
    text: str = ""
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenInfo, ...] | None = None
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # running total for this choice
    prompt_logprobs: tuple[TokenInfo, ...] | None = None


Deliver = Callable[["Chunk | BaseException"], None]


@dataclass
class _Request:
    request_id: int
    prompt: list[int]
    params: GenerationParams
    deliver: Deliver
    grammar: str | None = None  # compiled from params.constraint at submission
    unfinished: int = 0
    cancelled: bool = False


@dataclass
class _Sequence:
    request: _Request
    index: int
    slot: int
    max_tokens: int
    stop_ids: frozenset[int]
    text: TextAssembler
    answer: ConstrainedAnswer | None = None
    generated: int = 0
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenInfo] = field(default_factory=list)


@dataclass(frozen=True)
class Load:
    """What the batch loop is doing now, and its prefix cache's counts since it started."""

    running: int
    waiting: int
    slots: int
    prompt_tokens: int = 0  # prompt tokens looked up in the prefix cache
    cached_tokens: int = 0  # of those, served from it (KV reused, not computed)

    @property
    def prefix_hit_rate(self) -> float:
        """Prompt tokens served from the prefix cache / prompt tokens (0 before any)."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class GenerationServer:
    """Owns a ``GemmaEngine`` and its batch-loop thread."""

    def __init__(
        self, engine: GemmaEngine, tokenizer: GemmaTokenizer, engine_config: EngineConfig
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.config = engine_config
        self._lock = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._cancelled: set[int] = set()
        self._ids = count(1)
        self._slots: list[_Sequence | None] = [None] * engine.max_slots
        # The request whose long prompt is being prefilled a chunk per decode step.
        self._chunked: tuple[_Request, PrefillJob] | None = None
        self._closed = False
        self._default_stop = frozenset(
            {tokenizer.eos_id, *_optional_id(tokenizer, "<end_of_turn>")}
        )
        self._thread = threading.Thread(target=self._run, name="tollgate-batch-loop", daemon=True)
        self.grammars = GrammarVocabulary(tokenizer, engine.config.vocab_size)
        self.steps = 0
        # Steps that had a constrained slot, and the host time their masks took (benchmarks).
        self.constrained_steps = 0
        self.mask_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batch loop thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop the loop; waiting and running requests get ``EngineClosed``."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def load(self) -> Load:
        """Running sequences and waiting requests (a cheap, racy snapshot)."""
        running = sum(1 for s in self._slots if s is not None)
        cache = self.engine.prefix_stats()
        return Load(
            running=running,
            waiting=len(self._waiting) + (self._chunked is not None),
            slots=len(self._slots),
            prompt_tokens=cache.prompt_tokens,
            cached_tokens=cache.cached_tokens,
        )

    # -- submission ------------------------------------------------------------------------

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids for a prompt; text gets BOS, token-id prompts are taken as they are."""
        return self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)

    def submit(
        self, prompt: str | Sequence[int], params: GenerationParams, deliver: Deliver
    ) -> int:
        """Queue a request; ``deliver`` is called from the loop thread. Returns its id."""
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("empty prompt")
        if len(ids) + 1 > self.config.max_context:
            raise PromptTooLong(len(ids), self.config.max_context)
        if not 1 <= params.n <= self.engine.max_slots:
            raise ValueError(f"n must be between 1 and {self.engine.max_slots}")
        if params.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        for wanted in (params.logprobs, params.prompt_logprobs):
            if wanted is not None and not 0 <= wanted <= self.config.max_top_logprobs:
                raise ValueError(f"logprobs must be between 0 and {self.config.max_top_logprobs}")
        grammar = compile_grammar(params.constraint) if params.constraint is not None else None
        with self._lock:
            if self._closed:
                raise EngineClosed("engine is closed")
            if len(self._waiting) >= self.config.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests already wait")
            request = _Request(
                next(self._ids), ids, params, deliver, grammar=grammar, unfinished=params.n
            )
            self._waiting.append(request)
            self._lock.notify_all()
        return request.request_id

    def cancel(self, request_id: int) -> None:
        """Stop a request; its slots are freed before the next decode step."""
        with self._lock:
            self._cancelled.add(request_id)
            self._lock.notify_all()

    def stream(self, prompt: str | Sequence[int], params: GenerationParams) -> AsyncStream:
        """Submit from asyncio; iterate the result, close it to cancel."""
        stream = AsyncStream(self, params.n)
        stream.request_id = self.submit(prompt, params, stream.deliver)
        return stream

    # -- the batch loop ----------------------------------------------------------------------

    def _run(self) -> None:
        state = self.engine.init_state()
        while True:
            with self._lock:
                while (
                    not self._closed
                    and not self._waiting
                    and not self._cancelled
                    and not any(self._slots)
                    and self._chunked is None
                ):
                    self._lock.wait()
                if self._closed:
                    break
                cancelled, self._cancelled = self._cancelled, set()
            try:
                state = self._cancel(state, cancelled)
                state = self._admit(state)
                if any(self._slots):
                    state = self._step(state)
            except Exception as error:  # a failed step fails its requests, not the loop
                state = self._fail_all(state, error)
        self._shutdown()

    def _cancel(self, state: DecodeState, cancelled: set[int]) -> DecodeState:
        if not cancelled:
            return state
        with self._lock:
            self._waiting = deque(r for r in self._waiting if r.request_id not in cancelled)
        if self._chunked is not None and self._chunked[0].request_id in cancelled:
            self._chunked = None
        for seq in self._slots:
            if seq is not None and seq.request.request_id in cancelled:
                seq.request.cancelled = True
                state = self._free(state, seq)
        return state

    def _admit(self, state: DecodeState) -> DecodeState:
        """Prefill what may start before the next decode step.

        While others decode, the work between two steps is bounded: two prompts, or a long
        prompt's chunk and one prompt no longer than a chunk. Short prompts need not wait
        behind a long one being chunked (a second long one does); the slots its choices
        will take stay free for it.
        """
        running = any(self._slots)
        admitted = 0
        if self._chunked is not None:
            state = self._continue_chunked(state)
            admitted += 1
        while True:
            free = [i for i, s in enumerate(self._slots) if s is None]
            reserved = self._chunked[0].params.n if self._chunked is not None else 0
            with self._lock:
                if not self._waiting or len(free) - reserved < self._waiting[0].params.n:
                    return state
                if running and admitted >= 2:
                    return state
                if self._chunked is not None and self._chunks(self._waiting[0]):
                    return state  # one long prompt at a time
                request = self._waiting.popleft()
            try:
                # Read now: a stream admitted above this step may be what decodes meanwhile.
                if any(self._slots) and self._chunks(request):
                    self._chunked = (request, self.engine.begin_prefill(request.prompt))
                    state = self._continue_chunked(state)
                else:
                    state = self._start(state, request, free)
            except Exception as error:  # this request fails alone; running ones go on
                state = self._fail(state, request, error)
            admitted += 1

    def _chunks(self, request: _Request) -> bool:
        """Whether ``request``'s prompt is prefilled a chunk per step (long, and no prompt
        logprobs, which need every prompt row's hidden state at once)."""
        chunk = self.config.prefill_chunk_tokens
        return (
            chunk > 0
            and len(request.prompt) > chunk
            and request.params.prompt_logprobs is None
        )

    def _continue_chunked(self, state: DecodeState) -> DecodeState:
        """Prefill the next chunk of the long prompt under way; start it once all is done."""
        assert self._chunked is not None
        request, job = self._chunked
        try:
            if not job.finished:
                self.engine.advance(job, self.config.prefill_chunk_tokens)
            free = [i for i, s in enumerate(self._slots) if s is None]
            if job.finished and len(free) >= request.params.n:
                self._chunked = None
                state = self._answer(state, request, free, self.engine.finish(job))
        except Exception as error:  # this request fails alone; running ones go on
            self._chunked = None
            state = self._fail(state, request, error)
        return state

    def _start(self, state: DecodeState, request: _Request, free: list[int]) -> DecodeState:
        # Prompt logprobs need every prompt row's hidden state: such a prefill computes them all.
        reuse = request.params.prompt_logprobs is None
        prefix = self.engine.prefill_reusing(request.prompt, reuse)
        return self._answer(state, request, free, prefix)

    def _answer(
        self, state: DecodeState, request: _Request, free: list[int], prefix: Prefix
    ) -> DecodeState:
        """Choose each choice's first token from the prefilled prompt and give it a slot."""
        params = request.params
        prompt_info = (
            self._prompt_logprobs(prefix, params) if params.prompt_logprobs is not None else None
        )
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
        stop_ids = (
            frozenset(params.stop_token_ids)
            if params.stop_token_ids is not None
            else self._default_stop
        )
        budget = min(params.max_tokens, self.config.max_context - len(request.prompt))
        for index in range(params.n):
            sampling = SlotSampling(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                key=seed_key(seed, index),
            )
            n_top = params.logprobs or 0
            seq = _Sequence(
                request,
                index,
                free[index],
                budget,
                stop_ids,
                TextAssembler(self.tokenizer.decode, params.stop),
            )
            allowed = None
            if request.grammar is not None:
                seq.answer = self.grammars.start(request.grammar, stop_ids)
                allowed = self.engine.allow_all(1)
                self.grammars.fill([(seq.answer, 0)], allowed)
            first = self.engine.first_token(prefix, sampling, n_top, allowed)
            if index == 0 and prompt_info is not None:
                request.deliver(
                    Chunk(index=0, prompt_tokens=len(request.prompt), prompt_logprobs=prompt_info)
                )
            token = int(first.tokens[0])
            if not self._accept(seq, token, first, 0):
                self._slots[seq.slot] = seq
                state = self.engine.insert(state, prefix, seq.slot, token, sampling)
        return state

    def _prompt_logprobs(self, prefix: Prefix, params: GenerationParams) -> tuple[TokenInfo, ...]:
        out = self.engine.prompt_logprobs(prefix, params.prompt_logprobs or 0)
        first = TokenInfo(prefix.tokens[0], self.tokenizer.token_text(prefix.tokens[0]), None)
        rest = (self._info(out, row, int(out.tokens[row])) for row in range(len(out.tokens)))
        return (first, *rest)

    def _step(self, state: DecodeState) -> DecodeState:
        active = [s for s in self._slots if s is not None]
        sample = any(s.request.params.temperature > 0 for s in active)
        wants_lp = [
            s.request.params.logprobs for s in active if s.request.params.logprobs is not None
        ]
        n_top = self.config.max_top_logprobs if any(wants_lp) else 0
        allowed = self._allowed(active)
        state, out = self.engine.generate(state, n_top, sample or bool(wants_lp), allowed)
        self.steps += 1
        for seq in active:
            if self._slots[seq.slot] is not seq:  # its request failed on an earlier choice
                continue
            try:
                if self._accept(seq, int(out.tokens[seq.slot]), out, seq.slot):
                    state = self._free(state, seq)
            except EngineError as error:  # a broken grammar fails its own request only
                state = self._fail(state, seq.request, error)
        return state

    def _allowed(self, active: list[_Sequence]) -> np.ndarray | None:
        """This step's token mask, or None (no cost) when no active slot is constrained."""
        rows = [(s.answer, s.slot) for s in active if s.answer is not None]
        if not rows:
            return None
        started = time.perf_counter()
        allowed = self.engine.allow_all()
        self.grammars.fill(rows, allowed)
        self.constrained_steps += 1
        self.mask_seconds += time.perf_counter() - started
        return allowed

    def _accept(self, seq: _Sequence, token: int, out: StepOutput, row: int) -> bool:
        """Record one generated token; deliver what is ready. True when the sequence ended."""
        params = seq.request.params
        seq.generated += 1
        seq.pending_ids.append(token)
        if params.logprobs is not None:
            seq.pending_logprobs.append(self._info(out, row, token, params.logprobs))
        finish: FinishReason | None = None
        if token in seq.stop_ids:
            finish = "stop"
            piece = seq.text.finish()
        else:
            complete = seq.answer is not None and seq.answer.advance(token)
            piece = seq.text.add(token)
            if seq.text.stopped:
                finish = "stop"
            elif complete:  # the grammar allows nothing more: end without a stop token
                finish = "stop"
                piece += seq.text.finish()
            elif seq.generated >= seq.max_tokens:
                finish = "length"
                piece += seq.text.finish()
        # Deliver per token: a held-back piece still carries its token count for metering.
        seq.request.deliver(
            Chunk(
                index=seq.index,
                text=piece,
                token_ids=tuple(seq.pending_ids),
                logprobs=tuple(seq.pending_logprobs) if params.logprobs is not None else None,
                finish_reason=finish,
                prompt_tokens=len(seq.request.prompt),
                completion_tokens=seq.generated,
            )
        )
        seq.pending_ids.clear()
        seq.pending_logprobs.clear()
        if finish is not None:
            seq.request.unfinished -= 1
        return finish is not None

    def _info(self, out: StepOutput, row: int, token: int, n_top: int | None = None) -> TokenInfo:
        tokenizer = self.tokenizer
        k = out.top_ids.shape[1] if n_top is None else min(n_top, out.top_ids.shape[1])
        # A constrained row's impossible tokens (-inf) are no alternatives.
        top = tuple(
            (int(t), tokenizer.token_text(int(t)), float(lp))
            for t, lp in zip(out.top_ids[row, :k], out.top_logprobs[row, :k], strict=True)
            if lp > -np.inf
        )
        return TokenInfo(token, tokenizer.token_text(token), float(out.logprobs[row]), top)

    def _free(self, state: DecodeState, seq: _Sequence) -> DecodeState:
        if self._slots[seq.slot] is seq:
            self._slots[seq.slot] = None
            state = self.engine.release(state, seq.slot)
        return state

    def _fail(self, state: DecodeState, request: _Request, error: BaseException) -> DecodeState:
        request.deliver(error)
        for seq in self._slots:
            if seq is not None and seq.request is request:
                state = self._free(state, seq)
        return state

    def _fail_all(self, state: DecodeState, error: BaseException) -> DecodeState:
        for seq in list(self._slots):
            if seq is not None:
                seq.request.deliver(error)
                state = self._free(state, seq)
        return state

    def _shutdown(self) -> None:
        closed = EngineClosed("engine is closed")
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        if self._chunked is not None:
            waiting.append(self._chunked[0])
            self._chunked = None
        for request in waiting:
            request.deliver(closed)
        for seq in self._slots:
            if seq is not None:
                seq.request.deliver(closed)


class AsyncStream:
    """Chunks of one request for an asyncio consumer; ``aclose`` cancels the request."""

    def __init__(self, server: GenerationServer, choices: int = 1) -> None:
        self._server = server
        self._choices = choices
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Chunk | BaseException] = asyncio.Queue()
        self.request_id = 0
        self._done = False

    def deliver(self, item: Chunk | BaseException) -> None:
        """Called from the loop thread; a consumer whose event loop has closed is gone."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop closed: drop the request rather than fail the batch loop
            self._server.cancel(self.request_id)

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Chunk]:
        try:
            remaining = self._choices
            while remaining > 0:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    self._done = True  # the loop already dropped this request
                    raise item
                if item.finish_reason is not None:
                    remaining -= 1
                yield item
            self._done = True
        finally:
            if not self._done:
                self._server.cancel(self.request_id)

    async def aclose(self) -> None:
        """Cancel the request if it has not finished."""
        if not self._done:
            self._done = True
            self._server.cancel(self.request_id)


def _optional_id(tokenizer: GemmaTokenizer, piece: str) -> tuple[int, ...]:
    try:
        return (tokenizer.special_id(piece),)
    except KeyError:
        return ()
