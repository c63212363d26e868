"""A fake vLLM (and trtllm-serve) OpenAI-compatible server.

Speaks ``/v1/completions`` and ``/v1/chat/completions`` (streamed with ``[DONE]`` and the
``include_usage`` chunk, or whole), ``/health``, ``/v1/models`` and ``/metrics``.

vLLM (``vllm/entrypoints/openai/protocol.py`` and ``api_server.py``, 0.10+): errors are
nested ``{"error": {"message", "type", "param", "code"}}`` (``error_style="nested"``; before
0.10 flat ``{"object": "error", ...}``, ``"flat"``); ``/v1/models`` cards carry
``max_model_len``; ``/metrics`` is Prometheus text.

trtllm-serve (``error_style="trtllm"``; TensorRT-LLM ``tensorrt_llm/serve/openai_protocol.py``
and ``openai_server.py``, 1.x): errors are flat ``{"object": "error", "message", "type",
"param", "code"}`` with an integer code; request models forbid unknown fields (a 400); the
model cards have no ``max_model_len``; ``/metrics`` is JSON, the iteration stats queued since
the last call (``[]`` when nothing ran).

Tools and structured outputs, as vLLM answers them (``serving_chat.py``, 0.10): a chat request
with ``tools`` (``tool_choice`` not "none") whose last message is not a tool result is answered
by one call to the named function (or the first), its arguments the smallest instance of the
function's ``parameters``. Streamed, the call's first ``delta.tool_calls`` entry carries
``index``, ``id`` (``chatcmpl-tool-<hex>``), ``type`` and ``function.name`` (with
``arguments`` only for a named ``tool_choice``), later entries ``index`` and argument text; the
stream's finish reason is "tool_calls". Whole, the message has ``content: null`` and
``tool_calls``; its finish reason is "tool_calls", but "stop" for a named ``tool_choice``
(vLLM's full generator reports the engine's reason there). After a tool result the answer is
``Tool result: <content>``; ``response_format`` json_schema is answered with the smallest
instance of the schema, json_object with ``{}``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from tests.fakes._server import (
    DEFAULT_TOKENS,
    Dropped,
    Failure,
    FakeHTTPUpstream,
    Plan,
    Recorded,
    Send,
    end_body,
    hang_forever,
    metrics_text,
    prompt_pieces,
    send_bytes,
    send_chunk,
    send_json,
    start_response,
)

ErrorStyle = Literal["nested", "flat", "trtllm"]
_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}
# What trtllm-serve's CompletionRequest / ChatCompletionRequest accept (extra="forbid").
TRTLLM_FIELDS = frozenset(
    {
        "model", "prompt", "messages", "best_of", "echo", "frequency_penalty", "logit_bias",
        "logprobs", "top_logprobs", "max_tokens", "max_completion_tokens", "n",
        "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix",
        "temperature", "top_p", "user", "top_k", "min_p", "repetition_penalty",
        "length_penalty", "stop_token_ids", "include_stop_str_in_output", "ignore_eos",
        "min_tokens", "skip_special_tokens", "spaces_between_special_tokens",
        "response_format", "tools", "tool_choice",
    }
)  # fmt: skip


class FakeVLLM(FakeHTTPUpstream):
    """Scriptable OpenAI-compatible upstream on a real socket."""

    def __init__(
        self,
        tokens: Sequence[str] = DEFAULT_TOKENS,
        *,
        failure: Failure | None = None,
        api_key: str | None = None,
        error_style: ErrorStyle = "nested",
        send_usage: bool = True,
        tokens_per_chunk: int = 1,
        served_model: str = "fake-model",
        max_model_len: int | None = 4096,
        auto_tools: bool = True,
    ) -> None:
        super().__init__(tokens, failure=failure, api_key=api_key)
        self.error_style = error_style
        self.send_usage = send_usage  # False: behave like a server that ignores include_usage
        # >1: several tokens per chunk, as vLLM sends under load or with speculative decoding
        # (logprobs are then those of the chunk's last token only: use with logprobs off).
        self.tokens_per_chunk = tokens_per_chunk
        self.load = {"running": 3, "waiting": 2, "kv": 0.25}
        self.served_model = served_model
        self.max_model_len = max_model_len
        self.iteration_stats: list[dict[str, Any]] = []  # trtllm-serve: drained by /metrics
        # False: started without --enable-auto-tool-choice, so "auto" tool choice is a 400
        self.auto_tools = auto_tools

    async def handle(self, request: Recorded, send: Send) -> None:
        path = request.path.removeprefix("/v1")
        if request.method == "GET":
            await self._get(path, send)
            return
        if path not in ("/completions", "/chat/completions"):
            await self._error(send, 404, f"no route {request.path}")
            return
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("max_tokens", 16), int):
            await self._error(send, 400, "body must be JSON with an integer max_tokens")
            return
        unknown = sorted(set(body) - TRTLLM_FIELDS) if self.error_style == "trtllm" else []
        if unknown:
            why = f"{unknown[0]}\n  Extra inputs are not permitted"
            await self._error(send, 400, f"1 validation error for CompletionRequest\n{why}")
            return
        failure = self.failure
        if failure is not None and failure.kind == "status":
            await self._error(send, failure.status, failure.message, failure)
            return
        chat = path == "/chat/completions"
        if (chat and "messages" not in body) or (not chat and "prompt" not in body):
            await self._error(send, 400, "a prompt or messages is required", param="prompt")
            return
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        stop = body.get("stop") or ()
        auto = chat and body.get("tools") and body.get("tool_choice", "auto") == "auto"
        if auto and not self.auto_tools:  # serving_chat.py's check, before anything is generated
            await self._error(send, 400, '"auto" tool choice requires '
                              "--enable-auto-tool-choice and --tool-call-parser to be set")
            return
        call = _tool_call(body) if chat else None
        if call is not None:
            await self._call(body, call, send)
            return
        scripted = _scripted_text(body) if chat else None
        plan = self.plan(limit, [stop] if isinstance(stop, str) else stop, text=scripted)
        if body.get("stream"):
            await self._stream(body, chat, plan, send)
        else:
            await self._whole(body, chat, plan, send)

    async def _get(self, path: str, send: Send) -> None:
        if path == "/health":
            await send_bytes(send, 200 if self.healthy else 503, b"", "application/json")
        elif path == "/models":
            card: dict[str, Any] = {"id": self.served_model, "object": "model"}
            if self.error_style == "trtllm":
                card["owned_by"] = "tensorrt_llm"
            else:
                card.update(owned_by="vllm", root=self.served_model, parent=None)
                card["max_model_len"] = self.max_model_len
            await send_json(send, 200, {"object": "list", "data": [card]})
        elif path == "/metrics" and self.error_style == "trtllm":
            drained, self.iteration_stats = self.iteration_stats, []
            await send_json(send, 200, drained)
        elif path == "/metrics":
            labels = {"model_name": "fake-model", "engine": "0"}
            body = metrics_text(
                [
                    ("vllm:num_requests_running", labels, self.load["running"]),
                    ("vllm:num_requests_waiting", labels, self.load["waiting"]),
                    ("vllm:kv_cache_usage_perc", labels, self.load["kv"]),
                ]
            )
            await send_bytes(
                send, 200, b"# HELP vllm:num_requests_running x\n" + body, "text/plain"
            )
        else:
            await self._error(send, 404, "not found")

    async def _error(
        self,
        send: Send,
        status: int,
        message: str,
        failure: Failure | None = None,
        param: str | None = None,
    ) -> None:
        headers = dict(failure.headers) if failure else {}
        if failure is not None and failure.body is not None:
            await send_bytes(send, status, failure.body, "application/json", headers)
            return
        await send_json(send, status, self._error_body(status, message, param), headers)

    def _error_body(self, status: int, message: str, param: str | None = None) -> Any:
        kind = _ERROR_TYPES.get(status, "InternalServerError")
        info = {"message": message, "type": kind, "param": param, "code": status}
        if self.error_style in ("flat", "trtllm"):
            return {"object": "error", **info}
        return {"error": info}

    async def _whole(self, body: dict[str, Any], chat: bool, plan: Plan, send: Send) -> None:
        text = "".join(plan.texts)
        reason = "length" if plan.reason == "length" else "stop"
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        answer = {
            "id": "cmpl-fake",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [choice],
            "usage": self._usage(body, chat, len(plan.texts)),
        }
        if self.failure is not None and self.failure.kind == "malformed":
            await send_bytes(send, 200, b"<html>upstream proxy error</html>", "text/html")
            return
        await send_json(send, 200, answer)

    def _usage(self, body: dict[str, Any], chat: bool, completion: int) -> dict[str, int]:
        if chat:
            prompt = sum(len(prompt_pieces(m.get("content") or "")) + 3 for m in body["messages"])
        elif isinstance(body["prompt"], list):
            prompt = len(body["prompt"])
        else:
            prompt = len(prompt_pieces(body["prompt"]))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def _stream(self, body: dict[str, Any], chat: bool, plan: Plan, send: Send) -> None:
        await start_response(send, 200, "text/event-stream")
        base = {
            "id": "cmpl-fake",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
        }
        options = body.get("stream_options") or {}
        continuous = bool(options.get("continuous_usage_stats"))
        usage = self._usage(body, chat, 0)

        async def event(payload: Any) -> None:
            await send_chunk(send, b"data: " + orjson.dumps(payload) + b"\n\n")

        def chunk(choice: dict[str, Any], sent: int) -> dict[str, Any]:
            out = {**base, "choices": [choice]}
            if continuous:
                out["usage"] = {**usage, "completion_tokens": sent}
            return out

        if chat:
            await event(chunk({"index": 0, "delta": {"role": "assistant", "content": ""}}, 0))
        echo = not chat and body.get("echo") and body.get("logprobs") is not None
        pending: list[str] = []
        for index, text in enumerate(plan.texts):
            failure = self.failure_at(index)
            if failure is not None:
                await self._fail(failure, event, send)
                return
            await self.pace(index)
            pending.append(text)
            self._iterated()
            if len(pending) < self.tokens_per_chunk and index + 1 < len(plan.texts):
                continue
            choice = self._choice(body, chat, "".join(pending), index)
            if echo and index + 1 == len(pending):  # the first chunk
                _prepend_echo(choice, body)
            pending = []
            await event(chunk(choice, index + 1))
        failure = self.failure_at(len(plan.texts))
        if failure is not None:
            await self._fail(failure, event, send)
            return
        reason = "length" if plan.reason == "length" else "stop"
        last: dict[str, Any] = {"index": 0, "finish_reason": reason, "stop_reason": plan.stop_hit}
        if chat:
            last["delta"] = {}
        else:
            last["text"] = ""
        await event(chunk(last, len(plan.texts)))
        if options.get("include_usage") and self.send_usage:
            final = {**usage, "completion_tokens": len(plan.texts)}
            final["total_tokens"] = final["prompt_tokens"] + final["completion_tokens"]
            await event({**base, "choices": [], "usage": final})
        await send_chunk(send, b"data: [DONE]\n\n")
        await end_body(send)

    async def _call(self, body: dict[str, Any], call: _Call, send: Send) -> None:
        """Answer with one tool call, streamed in vLLM's shapes or whole."""
        usage = self._usage(body, True, len(call.pieces))
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body.get("model")}
        if not body.get("stream"):
            function = {"name": call.name, "arguments": "".join(call.pieces)}
            made = {"id": call.id, "type": "function", "function": function}
            message = {"role": "assistant", "content": None, "tool_calls": [made]}
            reason = "stop" if call.named else "tool_calls"
            choice = {"index": 0, "message": message, "finish_reason": reason}
            answer = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            await send_json(send, 200, answer)
            return
        await start_response(send, 200, "text/event-stream")
        base["object"] = "chat.completion.chunk"

        async def data(payload: dict[str, Any]) -> None:
            await send_chunk(send, b"data: " + orjson.dumps(payload) + b"\n\n")

        async def event(delta: dict[str, Any], reason: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            await data({**base, "choices": [choice]})

        await event({"role": "assistant", "content": ""})
        opening: dict[str, Any] = {"name": call.name}
        rest = call.pieces
        if call.named:  # the named path sends the first argument text with the name
            opening["arguments"], rest = call.pieces[0], call.pieces[1:]
        first = {"index": 0, "id": call.id, "type": "function", "function": opening}
        await event({"tool_calls": [first]})
        for piece in rest:
            await event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        await event({}, "tool_calls")
        if (body.get("stream_options") or {}).get("include_usage") and self.send_usage:
            await data({**base, "choices": [], "usage": usage})
        await send_chunk(send, b"data: [DONE]\n\n")
        await end_body(send)

    def _iterated(self) -> None:
        """One engine iteration ran: trtllm-serve queues its stats for the next /metrics."""
        if self.error_style == "trtllm":
            used = int(self.load["kv"] * 100)
            kv = {"maxNumBlocks": 100, "usedNumBlocks": used, "freeNumBlocks": 100 - used}
            self.iteration_stats.append({
                "numActiveRequests": self.load["running"],
                "numQueuedRequests": self.load["waiting"],
                "kvCacheStats": kv,
            })

    def _choice(self, body: dict[str, Any], chat: bool, text: str, index: int) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": None}
        top = body.get("top_logprobs") if chat else body.get("logprobs")
        if chat:
            choice["delta"] = {"content": text}
            if body.get("logprobs"):
                alts = [{"token": text, "logprob": -0.5}, {"token": "x", "logprob": -2.0}]
                entry = {"token": text, "logprob": -0.5, "top_logprobs": alts[: top or 0]}
                choice["logprobs"] = {"content": [entry]}
        else:
            choice["text"] = text
            if top is not None:
                choice["logprobs"] = {
                    "tokens": [text],
                    "token_logprobs": [-0.5],
                    "top_logprobs": [dict(list({text: -0.5, "x": -2.0}.items())[: max(top, 1)])],
                    "text_offset": [index],
                }
        return choice

    async def _fail(self, failure: Failure, event: Any, send: Send) -> None:
        if failure.kind == "error_event":
            await event(self._error_body(failure.status, failure.message))
            await send_chunk(send, b"data: [DONE]\n\n")
            await end_body(send)
        elif failure.kind == "malformed":
            await send_chunk(send, b'data: {"choices": [{"text": "oops"\n\n')
            await send_chunk(send, b"data: [DONE]\n\n")
            await end_body(send)
        elif failure.kind == "drop":
            raise Dropped("connection cut mid-stream")
        else:
            await hang_forever()


def _prepend_echo(choice: dict[str, Any], body: dict[str, Any]) -> None:
    """vLLM sends the echoed prompt in the same chunk as the first output token."""
    prompt = body["prompt"]
    pieces = [f"<{t}>" for t in prompt] if isinstance(prompt, list) else prompt_pieces(prompt)
    logprobs = choice["logprobs"]
    choice["text"] = "".join(pieces) + choice["text"]
    logprobs["tokens"] = pieces + logprobs["tokens"]
    logprobs["token_logprobs"] = [None] + [-1.0] * (len(pieces) - 1) + logprobs["token_logprobs"]
    logprobs["top_logprobs"] = [None] + [{p: -1.0} for p in pieces[1:]] + logprobs["top_logprobs"]
    offsets, at = [], 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    logprobs["text_offset"] = [*offsets, at]


@dataclass(frozen=True)
class _Call:
    """The one tool call the fake answers with: its arguments' JSON in streamed pieces."""

    id: str
    name: str
    pieces: list[str]
    named: bool


def _tool_call(body: Mapping[str, Any]) -> _Call | None:
    """The call a chat request gets: tools offered, not refused, and no tool result last."""
    tools, choice = body.get("tools") or [], body.get("tool_choice", "auto")
    messages = body.get("messages") or [{}]
    if not tools or choice == "none" or messages[-1].get("role") == "tool":
        return None
    named = isinstance(choice, dict)
    name = choice["function"]["name"] if named else tools[0]["function"]["name"]
    function = next(t["function"] for t in tools if t["function"]["name"] == name)
    schema = function.get("parameters") or {"type": "object"}
    text = orjson.dumps(smallest_instance(schema, schema)).decode()
    pieces = [text[i : i + 8] for i in range(0, len(text), 8)]
    return _Call("chatcmpl-tool-" + secrets.token_hex(16), name, pieces, named)


def _scripted_text(body: Mapping[str, Any]) -> str | None:
    """The answer to a tool result or a structured-output request; None for canned text."""
    messages = body.get("messages") or [{}]
    if messages[-1].get("role") == "tool":
        return f"Tool result: {messages[-1].get('content')}"
    format_ = body.get("response_format") or {}
    if format_.get("type") == "json_object":
        return "{}"
    if format_.get("type") == "json_schema":
        schema = format_["json_schema"].get("schema") or {}
        return orjson.dumps(smallest_instance(schema, schema)).decode()
    return None


def smallest_instance(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    """A small value valid against ``schema``: required properties filled, strings "x",
    numbers their minimum or 1, booleans true, enums and unions their first option."""
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).removeprefix("#/").split("/"):
            target = target[part]
        return smallest_instance(target, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for union in ("anyOf", "oneOf", "allOf"):
        if union in schema:
            return smallest_instance(schema[union][0], root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {
            name: smallest_instance(properties.get(name, {}), root)
            for name in schema.get("required") or ()
        }
    if kind == "array":
        count = int(schema.get("minItems", 0))
        return [smallest_instance(schema.get("items") or {}, root) for _ in range(count)]
    if kind == "string":
        return "x" * max(1, int(schema.get("minLength", 1)))
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    return None
