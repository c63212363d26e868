"""A fake text-generation-inference server (native API), as TGI 3.3 behaves.

Follows huggingface/text-generation-inference db931fc (3.3.6-dev0): ``router/src/server.rs``
(``generate``, ``generate_stream_internal``, the ``InferError`` -> status table),
``router/src/infer/mod.rs`` (``InferError::error_type``), ``router/src/validation.rs``
(messages and order of checks) and ``router/src/lib.rs`` (``Info``, ``Details``,
``StreamDetails``). What a client meets:

- ``/generate_stream`` answers 200 once the JSON is read; validation, overload and
  generation errors then arrive as a ``data:{"error", "error_type"}`` event (no ``[DONE]``,
  events as ``data:`` without a space, keep-alive comments). The last token event carries
  ``generated_text`` and ``details`` (with ``input_length``). An EOS ending adds the special
  ``</s>`` token, counted in ``generated_tokens``.
- ``/generate`` answers errors with their status (422 validation, 429 overloaded, 424
  generation, 500 incomplete); its ``details`` have no ``input_length``.
- A body that is not a ``GenerateRequest`` is axum's plain-text 422.
- ``/info`` has ``model_sha``, ``max_client_batch_size``, ``router``, ``sha``,
  ``docker_label`` and no ``model_dtype`` (gone since 2024-07).
"""

from __future__ import annotations

from collections.abc import Sequence
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
    end_body,
    hang_forever,
    metrics_text,
    prompt_pieces,
    send_bytes,
    send_chunk,
    send_json,
    start_response,
)

EOS = {"id": 2, "text": "</s>", "logprob": -0.01, "special": True}
_ERROR_TYPES = {
    429: "overloaded",
    422: "validation",
    424: "generation",
    500: "incomplete_generation",
}
_REJECTED = b"Failed to deserialize the JSON body into the target type: missing field `inputs`"
_PREFIX = {
    "validation": "Input validation error: ",
    "generation": "Request failed during generation: ",
}


class FakeTGI(FakeHTTPUpstream):
    """Scriptable TGI upstream on a real socket."""

    def __init__(
        self,
        tokens: Sequence[str] = DEFAULT_TOKENS,
        *,
        failure: Failure | None = None,
        api_key: str | None = None,
        max_total_tokens: int = 4096,
        max_input_tokens: int = 4000,
        max_stop_sequences: int = 4,
    ) -> None:
        super().__init__(tokens, failure=failure, api_key=api_key)
        self.info: dict[str, Any] = {
            "model_id": "fake/model",
            "model_sha": "e985a63cdc139290c5f700ff1929f0b5942cced2",
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128,
            "max_best_of": 2,
            "max_stop_sequences": max_stop_sequences,
            "max_input_tokens": max_input_tokens,
            "max_total_tokens": max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": "3.3.6-dev0",
            "sha": None,
            "docker_label": None,
        }
        self.max_top_n_tokens = 5
        self.load = {"queue": 4, "batch": 9}

    async def handle(self, request: Recorded, send: Send) -> None:
        if request.method == "GET":
            await self._get(request.path, send)
            return
        if request.path not in ("/generate", "/generate_stream"):
            await self._error(send, 404, "not found")
            return
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
            # axum's Json extractor: a plain-text rejection, before the router sees anything
            await send_bytes(send, 422, _REJECTED, "text/plain; charset=utf-8")
            return
        stream = request.path == "/generate_stream"
        failure = self.failure
        if failure is not None and failure.kind == "status":
            if stream and failure.status in (422, 424, 429):  # the router's own errors
                await self._stream_error(send, failure.message, _kind(failure))
            else:
                await self._error(send, failure.status, failure.message, failure)
            return
        problem = self._validate(body, stream)
        if problem:
            if stream:
                await self._stream_error(send, _PREFIX["validation"] + problem, "validation")
            else:
                await self._error(send, 422, _PREFIX["validation"] + problem)
            return
        params = body.get("parameters") or {}
        new = params.get("max_new_tokens") or self.info["max_total_tokens"] - _length(body)
        plan = self.plan(new, params.get("stop") or (), keep_stop=True)
        if stream:
            await self._stream(body, plan, send)
        else:
            await self._whole(body, plan, send)

    def _validate(self, body: dict[str, Any], stream: bool) -> str | None:
        """``Validation::validate``'s checks, in its order, with its messages."""
        params = body.get("parameters") or {}
        if stream and (params.get("best_of") or 1) != 1:
            return "`best_of` != 1 is not supported when streaming tokens"
        if stream and params.get("decoder_input_details"):
            return "`decoder_input_details` == true is not supported when streaming tokens"
        if "temperature" in params and not params["temperature"] > 0:
            return "`temperature` must be strictly positive"
        if "top_p" in params and not 0 < params["top_p"] < 1:
            return "`top_p` must be > 0.0 and < 1.0"
        if "top_k" in params and not params["top_k"] > 0:
            return "`top_k` must be strictly positive"
        if params.get("max_new_tokens") == 0:
            return "`max_new_tokens` must be strictly positive"
        stops = params.get("stop") or []
        if len(stops) > self.info["max_stop_sequences"]:
            most = self.info["max_stop_sequences"]
            return f"`stop` supports up to {most} stop sequences. Given: {len(stops)}"
        top_n = params.get("top_n_tokens") or 0
        if top_n > self.max_top_n_tokens:
            return f"`top_n_tokens` must be >= 0 and <= {self.max_top_n_tokens}. Given: {top_n}"
        if not body["inputs"]:
            return "`inputs` cannot be empty"
        prompt = _length(body)
        new = params.get("max_new_tokens") or self.info["max_total_tokens"] - prompt
        if prompt + new > self.info["max_total_tokens"]:
            most = self.info["max_total_tokens"]
            return (
                f"`inputs` tokens + `max_new_tokens` must be <= {most}. "
                f"Given: {prompt} `inputs` tokens and {new} `max_new_tokens`"
            )
        if prompt > self.info["max_input_tokens"]:
            most = self.info["max_input_tokens"]
            return f"`inputs` must have less than {most} tokens. Given: {prompt}"
        return None

    async def _get(self, path: str, send: Send) -> None:
        if path == "/info":
            await send_json(send, 200, self.info)
        elif path == "/health":
            await send_bytes(send, 200 if self.healthy else 503, b"", "application/json")
        elif path == "/metrics":
            body = metrics_text(
                [
                    ("tgi_queue_size", {}, self.load["queue"]),
                    ("tgi_batch_current_size", {}, self.load["batch"]),
                ]
            )
            await send_bytes(send, 200, body, "text/plain; version=0.0.4")
        else:
            await self._error(send, 404, "not found")

    async def _error(
        self, send: Send, status: int, message: str, failure: Failure | None = None
    ) -> None:
        headers = dict(failure.headers) if failure else {}
        if failure is not None and failure.body is not None:
            await send_bytes(send, status, failure.body, "application/json", headers)
            return
        kind = (failure.error_type if failure else None) or _ERROR_TYPES.get(status, "generation")
        await send_json(send, status, {"error": message, "error_type": kind}, headers)

    def _tokens(self, plan: Plan, body: dict[str, Any]) -> list[dict[str, Any]]:
        tokens = [
            {"id": i, "text": t, "logprob": -0.5, "special": False}
            for i, t in zip(plan.ids, plan.texts, strict=True)
        ]
        if plan.reason == "eos":
            tokens.append(EOS)
        return tokens

    @staticmethod
    def _details(plan: Plan, tokens: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
        """``StreamDetails``: with ``input_length``."""
        reason = {"length": "length", "eos": "eos_token", "stop": "stop_sequence"}[plan.reason]
        return {
            "finish_reason": reason,
            "generated_tokens": len(tokens),
            "seed": (body.get("parameters") or {}).get("seed"),
            "input_length": _length(body),
        }

    async def _whole(self, body: dict[str, Any], plan: Plan, send: Send) -> None:
        tokens = self._tokens(plan, body)
        details = self._details(plan, tokens, body)
        del details["input_length"]  # `Details` of /generate has none
        params = body.get("parameters") or {}
        details["tokens"] = tokens
        if params.get("decoder_input_details"):
            pieces = prompt_pieces(body["inputs"])
            details["prefill"] = [
                {"id": 1000 + i, "text": p, "logprob": None if i == 0 else -1.0}
                for i, p in enumerate(pieces)
            ]
        else:
            details["prefill"] = []
        if params.get("top_n_tokens"):
            details["top_tokens"] = [[{**t, "logprob": t["logprob"]}] for t in tokens]
        if self.failure is not None and self.failure.kind == "hang":
            await hang_forever()
        if self.failure is not None and self.failure.kind == "malformed":
            await send_bytes(send, 200, b'{"generated_text": "trunc', "application/json")
            return
        text = "".join(t["text"] for t in tokens if not t["special"])
        await send_json(send, 200, {"generated_text": text, "details": details})

    async def _stream(self, body: dict[str, Any], plan: Plan, send: Send) -> None:
        await start_response(send, 200, "text/event-stream")
        await send_chunk(send, b":\n\n")  # axum's keep-alive comment
        tokens = self._tokens(plan, body)
        top_n = (body.get("parameters") or {}).get("top_n_tokens")
        for index, token in enumerate(tokens):
            failure = self.failure_at(index)
            if failure is not None:
                await self._fail(failure, send)
                return
            await self.pace(index)
            event: dict[str, Any] = {
                "index": index + 1,
                "token": token,
                "generated_text": None,
                "details": None,
            }
            if top_n:
                event["top_tokens"] = [
                    token,
                    {"id": 9, "text": "x", "logprob": -2.0, "special": False},
                ][:top_n]
            if index == len(tokens) - 1:
                event["generated_text"] = "".join(t["text"] for t in tokens if not t["special"])
                event["details"] = self._details(plan, tokens, body)
            await send_chunk(send, b"data:" + orjson.dumps(event) + b"\n\n")
        await end_body(send)

    async def _stream_error(self, send: Send, message: str, kind: str) -> None:
        """An error before any token, as ``/generate_stream`` sends it: in a 200 body."""
        await start_response(send, 200, "text/event-stream")
        error = {"error": message, "error_type": kind}
        await send_chunk(send, b"data:" + orjson.dumps(error) + b"\n\n")
        await end_body(send)

    async def _fail(self, failure: Failure, send: Send) -> None:
        if failure.kind == "error_event":
            error = {"error": failure.message, "error_type": failure.error_type or "generation"}
            await send_chunk(send, b"data:" + orjson.dumps(error) + b"\n\n")
            await end_body(send)
        elif failure.kind == "malformed":
            await send_chunk(send, b'data:{"index": 3, "token": {"id"\n\n')
            await end_body(send)
        elif failure.kind == "drop":
            raise Dropped("connection cut mid-stream")
        else:
            await hang_forever()


def _length(body: dict[str, Any]) -> int:
    return len(prompt_pieces(body["inputs"]))


def _kind(failure: Failure) -> str:
    return failure.error_type or _ERROR_TYPES.get(failure.status, "generation")
