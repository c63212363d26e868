"""Kind ``vllm``: any OpenAI-compatible server: vLLM, trtllm-serve, llama.cpp, OpenAI itself.

Upstream calls always stream with ``stream_options.include_usage`` so that usage is never
lost, even when the gateway folds the answer for a non-streaming client. Where a server
differs (``adapters._openai_servers``: learned once from ``/openapi.json`` and ``/v1/models``
on first use), the adapter adapts: the context length a server states becomes
``max_context``; one that does not stream an echo answers echo requests unstreamed; one that
aborts a running stream for a new request gets one request at a time. Where a stream brings
no usage, each chunk counts as the engine step it is (``_step_tokens``).

Options: ``chat`` (default true), ``token_prompts`` (true), ``suffix`` (false),
``max_logprobs`` (20), ``max_stop_sequences``, ``max_context`` (wins over the server's),
``max_tokens_field`` (``max_tokens``; ``max_completion_tokens`` for OpenAI's newer chat
models), ``continuous_usage_stats`` (vLLM only: exact per-chunk token counts), ``api_prefix``
(``/v1`` unless the url already ends in it), ``health_path`` (``/health``; a 404 there means
the server has none and is up), ``tools`` (true: function calling is passed through; set false
for a vLLM started without ``--enable-auto-tool-choice``), ``structured`` (true:
``response_format`` json_object / json_schema is passed through to the server's guided
decoding), ``prefix_cache`` (true, vLLM's default: the router prefers the replica likely to
hold a prompt's prefix), and the traits ``serial`` and ``stream_echo``.

Tool calls stream as vLLM streams them (``serving_chat.py``, 0.10+): a call's first
``delta.tool_calls`` entry has its ``index``, ``id``, ``type`` and ``function.name``, the
later ones add ``function.arguments`` text; the choice ends with ``finish_reason:
"tool_calls"`` (``"stop"`` when ``tool_choice`` named the function, as OpenAI does too).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson

from adapters._batch import DeltaBatch
from adapters._deadline import Deadline
from adapters._errors import event_error, said_in
from adapters._http import MALFORMED, Fetched, HTTPBackend, loads
from adapters._openai_servers import ServerTraits, model_context
from adapters._prometheus import mean, parse_metrics, total
from adapters.base import (
    BackendError,
    BadRequest,
    Capabilities,
    ChatMessage,
    Delta,
    FinishReason,
    GenerationRequest,
    LoadSnapshot,
    TokenLogprob,
    ToolCallDelta,
    Unavailable,
    UpstreamProtocolError,
    Usage,
)

# Keys the adapter owns: a client-sent extra may not redirect or unstream the call.
_RESERVED = frozenset({"model", "prompt", "messages", "stream", "stream_options", "n"})
_VLLM_METRICS = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",  # the name before vLLM 0.10
)


class OpenAICompatibleBackend(HTTPBackend):
    """An OpenAI-compatible server reached over HTTP (``/v1/completions`` and chat)."""

    kind = "vllm"

    def _configure(self, opts: Mapping[str, Any]) -> Capabilities:
        self._prefix = str(opts.get("api_prefix", "" if self.url.endswith("/v1") else "/v1"))
        self._health_path = str(opts.get("health_path", "/health"))
        self._max_tokens_field = str(opts.get("max_tokens_field", "max_tokens"))
        self._continuous = bool(opts.get("continuous_usage_stats", False))
        stream_options: dict[str, bool] = {"include_usage": True}
        if self._continuous:
            stream_options["continuous_usage_stats"] = True
        self._stream_options = stream_options
        self._configured_context: int | None = opts.get("max_context")
        self._traits = ServerTraits.configured(opts)
        self._learned = False
        self._turns: asyncio.Semaphore | None = None
        return Capabilities(
            chat=bool(opts.get("chat", True)),
            token_prompts=bool(opts.get("token_prompts", True)),
            echo=True,
            logprobs=int(opts.get("max_logprobs", 20)),
            stop=True,
            max_stop_sequences=opts.get("max_stop_sequences"),
            seed=True,
            logit_bias=True,
            penalties=True,
            suffix=bool(opts.get("suffix", False)),
            tools=bool(opts.get("tools", True)),
            structured=bool(opts.get("structured", True)),
            prefix_cache=bool(opts.get("prefix_cache", True)),
            max_context=opts.get("max_context"),
        )

    async def generate(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream one (chat) completion; closing the iterator drops the upstream call."""
        await self._learn()
        async with self._turn():
            if req.echo and req.messages is None and self._traits.stream_echo is False:
                source = self._echo_unstreamed(req)
            else:
                source = self._streamed(req)
            async with aclosing(source) as deltas:
                async for delta in deltas:
                    yield delta

    async def _streamed(self, req: GenerationRequest) -> AsyncGenerator[Delta, None]:
        chat = req.messages is not None
        path, body = self._request(req)
        deadline = Deadline(self.timeouts, self.name)
        finish: FinishReason | None = None
        usage: Mapping[str, Any] | None = None
        counted = 0
        done = False
        heard = False  # any event at all
        echo_pending = req.echo and not chat

        def read_event(data: str, batch: DeltaBatch) -> Delta | None:
            nonlocal finish, usage, counted, done, echo_pending, heard
            heard = True
            if data == "[DONE]":
                # Read on to the end of the body rather than stop: a response closed early
                # drops its keep-alive connection, and the next request pays for a new one.
                done = True
                return None
            if done:
                raise UpstreamProtocolError("data after [DONE]", backend=self.name)
            chunk = loads(data, self.name)
            if "error" in chunk or chunk.get("object") == "error":
                raise _stream_error(chunk, self.name)
            chunk_usage = chunk.get("usage")
            if chunk_usage:
                usage = chunk_usage
            echo: Delta | None = None
            for choice in chunk.get("choices") or ():
                text, logprobs = _piece(choice, chat)
                if echo_pending and logprobs is not None:
                    echo_pending = False
                    echo, text, logprobs = self._split_echo(req, text, logprobs)
                reason = choice.get("finish_reason")
                if self._continuous and chunk_usage:
                    tokens = int(chunk_usage["completion_tokens"]) - counted
                elif logprobs is not None:
                    tokens = len(logprobs)
                else:
                    tokens = _step_tokens(choice, chat, text, reason)
                if text or tokens:
                    counted += tokens
                    batch.add(text, tokens, logprobs)
                if chat:
                    for call in (choice.get("delta") or {}).get("tool_calls") or ():
                        batch.add_call(_tool_call_delta(call))
                if reason is not None:
                    finish = self._finish(reason)
            return echo  # the prompt goes out first, on its own

        events = self._events(path, body, deadline)
        async with aclosing(self._deltas(events, deadline, read_event)) as deltas:
            async for delta in deltas:
                yield delta
        if not heard:
            # A 200 and not one event: the server refused the request after it had already
            # answered 200 (llama-cpp-python does so for a prompt beyond its context).
            raise BadRequest(
                "The backend refused the request without an answer.",
                backend=self.name,
                detail="a 200 stream with no events",
            )
        if finish is None:
            # Not a complete answer, however it ended (llama-cpp-python ends a stream it
            # interrupts with [DONE] and no finish_reason).
            state = "[DONE] without a finish_reason" if done else "end of stream before [DONE]"
            raise UpstreamProtocolError(
                "The backend's answer broke off.", backend=self.name, detail=state
            )
        yield Delta(finish_reason=finish, usage=self._usage(usage, counted))

    async def _echo_unstreamed(self, req: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """Echo with prompt logprobs from a server that streams no echo: one whole answer,
        parted into the prompt's entries (those at offsets inside it) and the output's."""
        path, body = self._request(req)
        body["stream"] = False
        body.pop("stream_options", None)
        answer = await self._post_json(path, body, Deadline(self.timeouts, self.name))
        try:
            choice = answer["choices"][0]
            raw = choice.get("logprobs") or {}
            entries = _completion_logprobs(raw) if raw else []
            prompt = req.prompt or ""
            if req.prompt_token_ids is not None:
                count = min(len(entries), len(req.prompt_token_ids))
            else:
                offsets = raw.get("text_offset") or []
                count = sum(1 for at in offsets if at < len(prompt))
            text = str(choice.get("text") or "")
            usage = self._usage(answer.get("usage"), len(entries) - count)
            finish = self._finish(choice.get("finish_reason") or "stop")
        except MALFORMED as exc:
            raise UpstreamProtocolError(
                "The backend sent an answer the gateway cannot read.",
                backend=self.name,
                detail=str(answer)[:200],
            ) from exc
        prompt_text = prompt or "".join(e.token for e in entries[:count])
        yield Delta(text=prompt_text, logprobs=entries[:count], echo=True)
        rest = text.removeprefix(prompt_text)
        yield Delta(text=rest, tokens=usage.completion_tokens, logprobs=entries[count:] or None)
        yield Delta(finish_reason=finish, usage=usage)

    def _split_echo(
        self, req: GenerationRequest, text: str, logprobs: list[TokenLogprob]
    ) -> tuple[Delta, str, list[TokenLogprob]]:
        """The echoed prompt, parted from the first output of the chunk that carries both.

        vLLM puts them in one chunk. A server whose first chunk is output only (it streams
        no echo) gets the prompt echoed without logprobs, and is answered unstreamed next time.
        """
        if req.prompt_token_ids is None and not text.startswith(req.prompt or ""):
            self._traits.stream_echo = False
            return Delta(text=req.prompt or "", logprobs=[], echo=True), text, logprobs
        return _split_echo(req, text, logprobs)

    # -- what the server is ----------------------------------------------------------------

    async def _learn(self) -> None:
        """Once: which server this is and the context it states (cheap routes only)."""
        if self._learned:
            return
        document = await self._get("/openapi.json")
        if document is None:
            return  # unreachable: learn on a later call
        self._learned = True
        self._traits.adopt_openapi(_json(document))
        if not self._traits.llama_cpp:
            # llama-cpp-python's /v1/models waits for the model lock, which aborts a stream.
            listing = await self._get(f"{self._prefix}/models")
            stated = model_context(_json(listing), self.models.values())
            self._traits.max_context = stated
        context = self._configured_context or self._traits.max_context
        self.capabilities = replace(self.capabilities, max_context=context)

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """Hold the server's one slot for the whole answer when it takes one at a time."""
        if not self._traits.serial:
            yield
            return
        if self._turns is None:
            self._turns = asyncio.Semaphore(1)
        async with self._turns:
            yield

    def _request(self, req: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": req.model}
        if req.messages is not None:
            path = f"{self._prefix}/chat/completions"
            body["messages"] = [_message_json(m) for m in req.messages]
            body[self._max_tokens_field] = req.max_tokens
            if req.tools:
                body["tools"] = list(req.tools)
                if req.tool_choice is not None:
                    body["tool_choice"] = req.tool_choice
                if req.parallel_tool_calls is not None:
                    body["parallel_tool_calls"] = req.parallel_tool_calls
            if req.response_format is not None:
                body["response_format"] = req.response_format
            if req.logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = req.logprobs
        else:
            path = f"{self._prefix}/completions"
            prompt = req.prompt if req.prompt is not None else list(req.prompt_token_ids or ())
            body["prompt"] = prompt
            body["max_tokens"] = req.max_tokens
            if req.logprobs is not None:
                body["logprobs"] = req.logprobs
            if req.echo:
                body["echo"] = True
            if req.suffix is not None:
                body["suffix"] = req.suffix
        body["stream"] = True
        body["stream_options"] = self._stream_options
        for key, value in (
            ("temperature", req.temperature),
            ("top_p", req.top_p),
            ("seed", req.seed),
            ("presence_penalty", req.presence_penalty),
            ("frequency_penalty", req.frequency_penalty),
            ("logit_bias", req.logit_bias),
        ):
            if value is not None:
                body[key] = value
        if req.stop:
            body["stop"] = list(req.stop)
        for key, value in req.extra.items():
            if key not in _RESERVED:
                body[key] = value
        return path, body

    def _finish(self, reason: str) -> FinishReason:
        if reason == "length":
            return "length"
        if reason == "tool_calls":
            return "tool_calls"
        if reason == "abort":  # vLLM aborted it (shutdown, preemption limits): not an answer
            raise Unavailable(
                "The backend aborted the generation.", backend=self.name, detail="finish: abort"
            )
        return "stop"  # stop, eos, content_filter: the model ended the text

    @staticmethod
    def _usage(usage: Mapping[str, Any] | None, counted: int) -> Usage:
        if not usage:
            return Usage(prompt_tokens=None, completion_tokens=counted)
        prompt = usage.get("prompt_tokens")
        return Usage(
            prompt_tokens=int(prompt) if prompt is not None else None,
            completion_tokens=int(usage.get("completion_tokens", counted)),
        )

    async def probe(self) -> LoadSnapshot:
        """``/health`` for liveness (a 404 there: the server has none, and it answered);
        vLLM's Prometheus or trtllm-serve's JSON metrics for load."""
        await self._learn()
        snapshot = await self._probe(self._health_path, await self._load())
        if not snapshot.healthy and snapshot.detail == "health answered 404":
            return replace(snapshot, healthy=True, detail="no health route: answering HTTP")
        return snapshot

    async def _load(self) -> LoadSnapshot | None:
        fetched = await self._metrics_text()
        if fetched is None:
            return None
        text, content_type = fetched
        if "json" in content_type or text.lstrip()[:1] in ("[", "{"):
            return _trtllm_load(text)
        samples = parse_metrics(text, _VLLM_METRICS)
        running = total(samples, "vllm:num_requests_running")
        waiting = total(samples, "vllm:num_requests_waiting")
        kv = mean(samples, "vllm:kv_cache_usage_perc")
        if kv is None:
            kv = mean(samples, "vllm:gpu_cache_usage_perc")
        return LoadSnapshot(
            healthy=True,
            running=int(running) if running is not None else None,
            waiting=int(waiting) if waiting is not None else None,
            kv_usage=kv,
        )


def _json(fetched: Fetched | None) -> Any:
    """A probe answer's JSON body, or None when it failed or is not JSON."""
    if fetched is None or fetched.status != 200:
        return None
    try:
        return orjson.loads(fetched.body)
    except orjson.JSONDecodeError:
        return None


def _step_tokens(choice: Mapping[str, Any], chat: bool, text: str, reason: object) -> int:
    """Tokens a chunk without counts stands for: one engine step each, its text empty or
    not (llama.cpp sends the token that completes a stop sequence with the text before the
    stop, often none), but for chat's opening role chunk; a closing chunk only if it has
    text. An estimate where one step yields more (speculative decoding, a character held
    back over several tokens) or a server sends usage, which then corrects it."""
    if reason is not None:
        return 1 if text else 0
    if chat and "role" in (choice.get("delta") or {}):
        return 1 if text else 0
    return 1


def _piece(choice: Mapping[str, Any], chat: bool) -> tuple[str, list[TokenLogprob] | None]:
    """The text and logprobs one streamed choice carries."""
    if chat:
        text = (choice.get("delta") or {}).get("content") or ""
        raw = choice.get("logprobs")
        return text, _chat_logprobs(raw["content"]) if raw and raw.get("content") else None
    raw = choice.get("logprobs")
    return choice.get("text") or "", _completion_logprobs(raw) if raw else None


def _message_json(message: ChatMessage) -> dict[str, Any]:
    """A chat turn in OpenAI's shape, with the tool calls it made or the call it answers."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool_call_delta(entry: Mapping[str, Any]) -> ToolCallDelta:
    """One ``delta.tool_calls`` entry (vLLM omits what an entry does not change)."""
    function = entry.get("function") or {}
    return ToolCallDelta(
        index=int(entry.get("index") or 0),
        id=entry.get("id") or None,
        name=function.get("name") or None,
        arguments=function.get("arguments") or "",
    )


def _completion_logprobs(raw: Mapping[str, Any]) -> list[TokenLogprob]:
    tokens: Sequence[str] = raw["tokens"]
    values: Sequence[float | None] = raw["token_logprobs"]
    tops: Sequence[Mapping[str, float] | None] = raw.get("top_logprobs") or [None] * len(tokens)
    return [TokenLogprob(t, v, top) for t, v, top in zip(tokens, values, tops, strict=True)]


def _chat_logprobs(content: Sequence[Mapping[str, Any]]) -> list[TokenLogprob]:
    return [
        TokenLogprob(
            entry["token"],
            entry["logprob"],
            {alt["token"]: alt["logprob"] for alt in entry.get("top_logprobs") or ()},
        )
        for entry in content
    ]


def _split_echo(
    req: GenerationRequest, text: str, logprobs: list[TokenLogprob]
) -> tuple[Delta, str, list[TokenLogprob]]:
    """Part the echoed prompt from the first output that came in one chunk with it.

    A token prompt has one logprob entry per prompt token; for a text prompt the entries
    whose text lies inside the prompt are the prompt's.
    """
    if req.prompt_token_ids is not None:
        count = len(req.prompt_token_ids)
        prompt_text = "".join(lp.token for lp in logprobs[:count])
    else:
        prompt_text = req.prompt or ""
        count, length = 0, 0
        while count < len(logprobs) and length < len(prompt_text):
            length += len(logprobs[count].token)
            count += 1
    rest = text.removeprefix(prompt_text)
    echo = Delta(text=prompt_text, logprobs=logprobs[:count], echo=True)
    return echo, rest, logprobs[count:]


def _stream_error(chunk: Mapping[str, Any], backend: str) -> BackendError:
    """An error event inside a 200 stream, nested (``{"error": {...}}``) or flat; classed by
    its HTTP code when it has one, else by its type."""
    error = chunk.get("error")
    body = error if isinstance(error, dict) else chunk
    return event_error(said_in(chunk), backend, body.get("code"))


def _trtllm_load(text: str) -> LoadSnapshot | None:
    """trtllm-serve's ``/metrics``: the iteration stats queued since the last call, newest
    last; none at all means no iteration ran since, so nothing was running or waiting."""
    try:
        stats = orjson.loads(text)
        if stats == []:
            return LoadSnapshot(healthy=True, running=0, waiting=0)
        latest = stats[-1] if isinstance(stats, list) else stats
        kv = latest.get("kvCacheStats") or {}
        used, most = kv.get("usedNumBlocks"), kv.get("maxNumBlocks")
        return LoadSnapshot(
            healthy=True,
            running=latest.get("numActiveRequests"),
            waiting=latest.get("numQueuedRequests"),
            kv_usage=used / most if used is not None and most else None,
        )
    except (orjson.JSONDecodeError, *MALFORMED):
        return None
