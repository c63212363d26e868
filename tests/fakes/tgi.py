"""A fake text-generation-inference server (native API).

``/generate_stream`` sends ``data:{...}`` events without a space after the colon and a
keep-alive comment, no ``[DONE]``; the last event carries ``generated_text`` and
``details``. An EOS ending adds the special ``</s>`` token, counted in ``generated_tokens``.
Errors are ``{"error", "error_type"}``; validation follows TGI (temperature > 0,
0 < top_p < 1, at most ``max_stop_sequences`` stops, prompt + new tokens within
``max_total_tokens``).
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
            "model_dtype": "torch.float16",
            "max_concurrent_requests": 128,
            "max_best_of": 2,
            "max_stop_sequences": max_stop_sequences,
            "max_input_tokens": max_input_tokens,
            "max_total_tokens": max_total_tokens,
            "validation_workers": 2,
            "version": "2.4.1",
        }
        self.load = {"queue": 4, "batch": 9}

    async def handle(self, request: Recorded, send: Send) -> None:
        if request.method == "GET":
            await self._get(request.path, send)
            return
        if request.path not in ("/generate", "/generate_stream"):
            await self._error(send, 404, "not found")
            return
        failure = self.failure
        if failure is not None and failure.kind == "status":
            await self._error(send, failure.status, failure.message, failure)
            return
        body = request.body
        problem = self._validate(body)
        if problem:
            await self._error(send, 422, problem)
            return
        params = body.get("parameters") or {}
        plan = self.plan(
            params.get("max_new_tokens") or 20, params.get("stop") or (), keep_stop=True
        )
        if request.path == "/generate":
            await self._whole(body, plan, send)
        else:
            await self._stream(body, plan, send)

    def _validate(self, body: Any) -> str | None:
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
            return "Failed to deserialize the JSON body: missing field `inputs`"
        params = body.get("parameters") or {}
        if "temperature" in params and not params["temperature"] > 0:
            return "`temperature` must be strictly positive"
        if "top_p" in params and not 0 < params["top_p"] < 1:
            return "`top_p` must be > 0.0 and < 1.0"
        stops = params.get("stop") or []
        if len(stops) > self.info["max_stop_sequences"]:
            return f"`stop` supports up to {self.info['max_stop_sequences']} stop sequences"
        prompt = len(prompt_pieces(body["inputs"]))
        new = params.get("max_new_tokens") or 20
        if prompt + new > self.info["max_total_tokens"]:
            return "`inputs` tokens + `max_new_tokens` must be <= max_total_tokens"
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
        reason = {"length": "length", "eos": "eos_token", "stop": "stop_sequence"}[plan.reason]
        return {
            "finish_reason": reason,
            "generated_tokens": len(tokens),
            "input_length": len(prompt_pieces(body["inputs"])),
            "seed": (body.get("parameters") or {}).get("seed"),
        }

    async def _whole(self, body: dict[str, Any], plan: Plan, send: Send) -> None:
        tokens = self._tokens(plan, body)
        details = self._details(plan, tokens, body)
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
