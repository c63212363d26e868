"""A fake of llama-cpp-python's OpenAI-compatible server, as 0.3.35 behaves.

Follows ``llama_cpp/server/app.py`` (routes, the double lock, ``get_event_publisher``),
``llama_cpp/server/errors.py`` (``RouteErrorHandler``) and ``Llama._create_completion`` in
``llama_cpp/llama.py`` at abetlen/llama-cpp-python 3691546 (v0.3.35). What a client meets:

- No ``/health`` (404); ``/v1/models`` lists ids only (no ``max_model_len``) and takes the
  model lock; ``/openapi.json`` is titled "🦙 llama.cpp Python API".
- ``interrupt_requests`` (default on): a request waiting for the model lock, a ``GET
  /v1/models`` included, ends the running stream with ``[DONE]`` and no ``finish_reason``,
  and the connection is then dropped mid-body (the cancelled publisher leaves the response
  unfinished: uvicorn's "ASGI callable returned without completing response"; seen on the
  real 0.3.36 with sse-starlette 3.7.0).
- A stream answers 200 before it runs: a prompt of ``n_ctx`` tokens or more (BOS counted)
  ends it with no event at all; unstreamed, the same prompt is a 400
  ``context_length_exceeded``. ``max_tokens`` beyond the context is cut silently.
- Streams carry no usage (``stream_options`` is ignored), never echo the prompt, and send
  logprobs per token with ``text_offset`` counted from the prompt's start; the token that
  completes a stop sequence is generated (and counted in unstreamed usage) but not sent.
- A body field of the wrong type is FastAPI's validation error, caught by the route's
  handler and answered 500 with ``str(error)``, the endpoint's file path included.
- Logprobs need ``logits_all``; without it they are a 500 (or an empty stream).

Tokens are the fakes' whitespace-led words, or those of ``tokenizer`` when given; a text
prompt gets BOS, a token prompt does not; chat renders Gemma's template.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson

from tests.fakes._server import (
    DEFAULT_TOKENS,
    Dropped,
    Failure,
    FakeHTTPUpstream,
    Plan,
    Recorded,
    Send,
    Signal,
    end_body,
    hang_forever,
    prompt_pieces,
    send_bytes,
    send_chunk,
    send_json,
    start_response,
)

TITLE = "\U0001f999 llama.cpp Python API"
_MARKERS = {"<start_of_turn>": 105, "<end_of_turn>": 106}
BOS = 2
# Body fields CreateCompletionRequest / CreateChatCompletionRequest type as integers.
_INTEGER_FIELDS = ("max_tokens", "top_k", "logprobs", "top_logprobs", "seed", "n", "min_tokens")
_APP = "/opt/venv/lib/python3.11/site-packages/llama_cpp/server/app.py"


def gemma_chat(messages: Sequence[dict[str, Any]]) -> str:
    """The Gemma template llama.cpp reads from the GGUF (system text leads the user turn)."""
    parts = []
    for message in messages:
        role = "model" if message.get("role") == "assistant" else "user"
        parts.append(f"<start_of_turn>{role}\n{message.get('content') or ''}<end_of_turn>\n")
    return "".join(parts) + "<start_of_turn>model\n"


def word_tokens(text: str) -> list[int]:
    """The fakes' tokenizer with BOS: Gemma's turn markers are one token each."""
    ids = [BOS]
    for part in re.split(r"(<start_of_turn>|<end_of_turn>)", text):
        if part in _MARKERS:
            ids.append(_MARKERS[part])
        else:
            ids.extend(1000 + i for i, _ in enumerate(prompt_pieces(part)))
    return ids


class FakeLlamaCpp(FakeHTTPUpstream):
    """Scriptable llama-cpp-python server on a real socket."""

    def __init__(
        self,
        tokens: Sequence[str] = DEFAULT_TOKENS,
        *,
        failure: Failure | None = None,
        api_key: str | None = None,
        n_ctx: int = 2048,
        interrupt_requests: bool = True,
        logits_all: bool = False,
        tokenizer: Callable[[str], list[int]] = word_tokens,
    ) -> None:
        super().__init__(tokens, failure=failure, api_key=api_key)
        self.n_ctx = n_ctx
        self.interrupt_requests = interrupt_requests
        self.logits_all = logits_all
        self.tokenize = tokenizer
        self.interrupted = 0  # streams ended early because another request came
        self.probed = Signal()  # a GET (a probe) arrived
        self.contended = Signal()  # a request waited for the model while another held it
        self._outer = asyncio.Lock()
        self._inner = asyncio.Lock()

    @asynccontextmanager
    async def _model(self) -> AsyncIterator[None]:
        """``get_llama_proxy``: a waiter holds the outer lock, which a running stream sees."""
        await self._outer.acquire()
        outer_held = True
        try:
            if self._inner.locked():
                self.contended.set()
            await self._inner.acquire()
            try:
                self._outer.release()
                outer_held = False
                yield
            finally:
                self._inner.release()
        finally:
            if outer_held:
                self._outer.release()

    async def handle(self, request: Recorded, send: Send) -> None:
        if not self.healthy:  # the process is gone; what answers is a proxy in front of it
            await send_bytes(send, 503, b"upstream connect error", "text/plain")
            return
        if request.method == "GET":
            await self._get(request.path, send)
            return
        chat = request.path == "/v1/chat/completions"
        if request.path not in ("/v1/completions", "/v1/chat/completions"):
            await send_json(send, 404, {"detail": "Not Found"})
            return
        body = request.body
        failure = self.failure
        if failure is not None and failure.kind == "status":
            payload = failure.body or orjson.dumps(_error(failure.message, "internal_server_error"))
            await send_bytes(send, failure.status, payload, "application/json", failure.headers)
            return
        invalid = _invalid_field(body, chat)
        if invalid is not None:
            await send_json(send, 500, invalid)
            return
        if body.get("stream"):
            await self._stream(body, chat, send)
        else:
            async with self._model():
                await self._whole(body, chat, send)

    async def _get(self, path: str, send: Send) -> None:
        self.probed.set()
        if path == "/v1/models":
            async with self._model():
                data = [{"id": "fake.gguf", "object": "model", "owned_by": "me", "permissions": []}]
                await send_json(send, 200, {"object": "list", "data": data})
        elif path == "/openapi.json":
            await send_json(send, 200, {"openapi": "3.1.0", "info": {"title": TITLE}, "paths": {}})
        else:
            await send_json(send, 404, {"detail": "Not Found"})

    # -- what one request asks for ---------------------------------------------------------

    def _prompt(self, body: dict[str, Any], chat: bool) -> tuple[str, list[int]]:
        if chat:
            text = gemma_chat(body.get("messages") or [])
            return text, self.tokenize(text)
        prompt = body.get("prompt") or ""
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            return "", list(prompt)  # a token prompt: no BOS added
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt else ""
        return prompt, self.tokenize(prompt) if prompt else []

    def _plan(self, body: dict[str, Any], prompt_ids: list[int]) -> Plan:
        room = self.n_ctx - len(prompt_ids)
        default = None if "messages" in body else 16  # the request models' defaults
        asked = body.get("max_tokens", default)
        limit = room if not asked or asked <= 0 else min(asked, room)
        stop = body.get("stop") or []
        return self.plan(limit, [stop] if isinstance(stop, str) else stop)

    def _refusal(self, body: dict[str, Any], chat: bool, prompt_ids: list[int]) -> Any:
        """The 400 ``context_length_exceeded`` of ``ErrorResponseFormatters`` (or None)."""
        if len(prompt_ids) < self.n_ctx:
            return None
        asked = body.get("max_tokens") or 0
        message = (
            f"This model's maximum context length is {self.n_ctx} tokens. However, you "
            f"requested {len(prompt_ids) + asked} tokens ({len(prompt_ids)} in the messages, "
            f"{asked} in the completion). Please reduce the length of the messages or completion."
        )
        error = _error(message, "invalid_request_error")
        error["error"].update(param="messages", code="context_length_exceeded")
        return error

    # -- answers ---------------------------------------------------------------------------

    async def _whole(self, body: dict[str, Any], chat: bool, send: Send) -> None:
        prompt, prompt_ids = self._prompt(body, chat)
        refusal = self._refusal(body, chat, prompt_ids)
        if refusal is not None:
            await send_json(send, 400, refusal)
            return
        if body.get("logprobs") is not None and not chat and not self.logits_all:
            message = "logprobs is not supported for models created with logits_all=False"
            await send_json(send, 500, _error(message, "internal_server_error"))
            return
        plan = self._plan(body, prompt_ids)
        generated = self._generated(plan)
        text = "".join(plan.texts)
        reason = "length" if plan.reason == "length" else "stop"
        usage = {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": generated,
            "total_tokens": len(prompt_ids) + generated,
        }
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
        else:
            logprobs = None
            if body.get("logprobs") is not None:
                logprobs = _whole_logprobs(prompt, plan.texts, bool(body.get("echo")))
            if body.get("echo"):
                text = prompt + text
            choice = {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": reason}
        answer = {
            "id": "cmpl-fake",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [choice],
            "usage": usage,
        }
        await send_json(send, 200, answer)

    async def _stream(self, body: dict[str, Any], chat: bool, send: Send) -> None:
        # EventSourceResponse: the 200 goes out before the model is even asked.
        await start_response(send, 200, "text/event-stream; charset=utf-8")
        async with self._model():
            prompt, prompt_ids = self._prompt(body, chat)
            if len(prompt_ids) >= self.n_ctx or (
                body.get("logprobs") is not None and not chat and not self.logits_all
            ):
                await end_body(send)  # the publisher raised: the body ends with no event
                return
            await self._events(body, chat, prompt, self._plan(body, prompt_ids), send)

    async def _events(
        self, body: dict[str, Any], chat: bool, prompt: str, plan: Plan, send: Send
    ) -> None:
        base = {
            "id": "cmpl-fake",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
        }

        async def event(choice: dict[str, Any]) -> None:
            payload = orjson.dumps({**base, "choices": [choice]})
            await send_chunk(send, b"data: " + payload + b"\n\n")

        if chat:
            await event({"index": 0, "delta": {"role": "assistant"}, "finish_reason": None})
        offset = len(prompt)
        for index, text in enumerate(plan.texts):
            failure = self.failure_at(index)
            if failure is not None:
                await self._fail(failure, send)
                return
            await self.pace(index)
            if chat:
                choice: dict[str, Any] = {"index": 0, "delta": {"content": text}}
            else:
                choice = {"text": text, "index": 0, "logprobs": None}
                if body.get("logprobs") is not None:
                    choice["logprobs"] = {
                        "tokens": [text],
                        "text_offset": [offset],
                        "token_logprobs": [-0.5],
                        "top_logprobs": [{text: -0.5}],
                    }
            offset += len(text)
            await event({**choice, "finish_reason": None})
            if self.interrupt_requests and self._outer.locked():
                self.interrupted += 1
                await send_chunk(send, b"data: [DONE]\n\n")
                return  # no end of body: uvicorn drops the connection
        failure = self.failure_at(len(plan.texts))
        if failure is not None:
            await self._fail(failure, send)
            return
        reason = "length" if plan.reason == "length" else "stop"
        last = {"index": 0, "delta": {}} if chat else {"text": "", "index": 0, "logprobs": None}
        await event({**last, "finish_reason": reason})
        await send_chunk(send, b"data: [DONE]\n\n")
        await end_body(send)

    @staticmethod
    def _generated(plan: Plan) -> int:
        """Tokens generated: the plan's (the stop-completing one is among them)."""
        return len(plan.texts)

    async def _fail(self, failure: Failure, send: Send) -> None:
        if failure.kind == "error_event":  # an exception in the publisher: the body just ends
            await end_body(send)
        elif failure.kind == "malformed":
            await send_chunk(send, b'data: {"choices": [{"text": "oops"\n\n')
            await end_body(send)
        elif failure.kind == "drop":
            raise Dropped("connection cut mid-stream")
        else:
            await hang_forever()


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _invalid_field(body: Any, chat: bool) -> dict[str, Any] | None:
    """FastAPI's ``RequestValidationError`` as ``RouteErrorHandler`` answers it: a 500."""
    if not isinstance(body, dict):
        return _error("Expecting value: line 1 column 1 (char 0)", "internal_server_error")
    for name in _INTEGER_FIELDS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            error = {
                "type": "int_parsing",
                "loc": ("body", name),
                "msg": "Input should be a valid integer, unable to parse string as an integer",
                "input": value,
            }
            endpoint = "create_chat_completion" if chat else "create_completion"
            message = (
                f"1 validation error:\n  {error}\n\n"
                f'  File "{_APP}", line 337, in {endpoint}\n'
                f"    POST /v1/{'chat/' if chat else ''}completions"
            )
            return _error(message, "internal_server_error")
    return None


def _whole_logprobs(prompt: str, texts: Sequence[str], echo: bool) -> dict[str, Any]:
    """Unstreamed logprobs: with echo the prompt's tokens (BOS dropped) lead, offsets from 0."""
    pieces = (prompt_pieces(prompt) if echo else []) + list(texts)
    offsets, at = [], 0 if echo else len(prompt)
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    values: list[float | None] = [-0.5] * len(pieces)
    tops: list[dict[str, float] | None] = [{p: -0.5} for p in pieces]
    if echo and pieces:
        values[0], tops[0] = None, None
    return {
        "tokens": pieces,
        "text_offset": offsets,
        "token_logprobs": values,
        "top_logprobs": tops,
    }
