"""A fake Triton Inference Server with a TensorRT-LLM ensemble behind the generate extension.

``/v2/models/{model}/generate`` and ``/generate_stream`` (``data: {...}`` events, one per
response); model metadata at ``GET /v2/models/{model}`` (KServe v2: ``inputs`` by name);
health at ``/v2/health/ready``; ``/metrics`` in Triton's exporter format. Errors are
``{"error": "..."}``, also inside a 200 stream.

As Triton's generate extension does, a body key that is not one of the model's inputs
becomes a request parameter and is ignored, silently. The ensemble's inputs follow
``all_models/inflight_batcher_llm/ensemble/config.pbtxt``: ``version="current"`` that of
NVIDIA/TensorRT-LLM ``triton_backend`` (``seed``; ``return_num_input_tokens`` /
``return_num_output_tokens``, answered per response as ``num_input_tokens`` /
``num_output_tokens``), ``version="0.19"`` that of the last triton-inference-server/
tensorrtllm_backend release with the models in it, v0.19.0 (``random_seed``, no counts).
"""

from __future__ import annotations

from collections.abc import Sequence
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

# The inputs of TensorRT-LLM triton_backend's `ensemble` (all optional but text_input, max_tokens).
ENSEMBLE_INPUTS = frozenset(
    {
        "text_input", "decoder_text_input", "max_tokens", "num_return_sequences", "bad_words",
        "stop_words", "exclude_input_in_output", "end_id", "pad_id", "top_k", "top_p",
        "temperature", "length_penalty", "repetition_penalty", "min_tokens",
        "presence_penalty", "frequency_penalty", "seed", "return_log_probs",
        "return_context_logits", "return_generation_logits", "return_perf_metrics",
        "return_num_input_tokens", "return_num_output_tokens", "beam_width", "stream",
        "prompt_embedding_table", "prompt_table_extra_id", "prompt_vocab_size",
        "embedding_bias_words", "embedding_bias_weights", "lora_task_id", "lora_weights",
        "lora_config", "guided_decoding_guide_type", "guided_decoding_guide",
    }
)  # fmt: skip
# tensorrtllm_backend v0.19.0's: `random_seed` for `seed`, no token counts.
ENSEMBLE_INPUTS_0_19 = (
    ENSEMBLE_INPUTS - {"seed", "return_num_input_tokens", "return_num_output_tokens"}
) | {"random_seed", "min_length"}


class FakeTriton(FakeHTTPUpstream):
    """Scriptable Triton + TensorRT-LLM upstream on a real socket."""

    def __init__(
        self,
        tokens: Sequence[str] = DEFAULT_TOKENS,
        *,
        failure: Failure | None = None,
        api_key: str | None = None,
        model: str = "ensemble",  # the name the ensemble is served under
        version: Literal["current", "0.19"] = "current",
    ) -> None:
        super().__init__(tokens, failure=failure, api_key=api_key)
        self.model = model
        self.inputs = ENSEMBLE_INPUTS if version == "current" else ENSEMBLE_INPUTS_0_19
        self.load = {"active": 6, "waiting": 3, "used": 30, "max": 120}

    async def handle(self, request: Recorded, send: Send) -> None:
        if request.method == "GET":
            await self._get(request.path, send)
            return
        prefix = f"/v2/models/{self.model}/"
        if not request.path.startswith(prefix):
            await send_json(send, 400, {"error": "Request for unknown model: not found"})
            return
        endpoint = request.path.removeprefix(prefix)
        failure = self.failure
        if failure is not None and failure.kind == "status":
            body = failure.body or orjson.dumps({"error": failure.message})
            await send_bytes(send, failure.status, body, "application/json", failure.headers)
            return
        problem = self._validate(request.body)
        if problem:
            await send_json(send, 400, {"error": problem})
            return
        body = self._inputs_of(request.body)
        plan = self.plan(body.get("max_tokens") or 16, body.get("stop_words") or (), keep_stop=True)
        if endpoint == "generate_stream":
            await self._stream(body, plan, send)
        elif endpoint == "generate":
            await self._whole(body, plan, send)
        else:
            await send_json(send, 404, {"error": "Not Found"})

    def _validate(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "failed to parse the request JSON buffer"
        if "text_input" not in body or "max_tokens" not in body:
            return f"expected 2 inputs but got {len(self._inputs_of(body))} for '{self.model}'"
        return None

    def _inputs_of(self, body: dict[str, Any]) -> dict[str, Any]:
        """The keys that are the model's inputs; the others are request parameters it
        never reads."""
        return {k: v for k, v in body.items() if k in self.inputs}

    async def _get(self, path: str, send: Send) -> None:
        if path == f"/v2/models/{self.model}":
            inputs = [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in sorted(self.inputs)]
            outputs = [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}]
            metadata = {
                "name": self.model,
                "versions": ["1"],
                "platform": "ensemble",
                "inputs": inputs,
                "outputs": outputs,
            }
            await send_json(send, 200, metadata)
        elif path == "/v2/health/ready":
            await send_bytes(send, 200 if self.healthy else 503, b"", "text/plain")
        elif path == "/metrics":
            req, kv = "nv_trt_llm_request_metrics", "nv_trt_llm_kv_cache_block_metrics"

            def trt(**labels: str) -> dict[str, str]:
                return {"model": "tensorrt_llm", "version": "1", **labels}

            body = metrics_text(
                [
                    (req, trt(request_type="active"), self.load["active"]),
                    (req, trt(request_type="waiting"), self.load["waiting"]),
                    (req, trt(request_type="max"), 64),
                    (kv, trt(kv_cache_block_type="used"), self.load["used"]),
                    (kv, trt(kv_cache_block_type="max"), self.load["max"]),
                    ("nv_inference_pending_request_count", {"model": "ensemble"}, 0),
                ]
            )
            await send_bytes(send, 200, body, "text/plain; charset=utf-8")
        else:
            await send_json(send, 404, {"error": "Not Found"})

    def _response(self, body: dict[str, Any], text: str, count: int) -> dict[str, Any]:
        response: dict[str, Any] = {
            "model_name": self.model,
            "model_version": "1",
            "sequence_end": False,
            "sequence_id": 0,
            "sequence_start": False,
            "text_output": text,
        }
        if body.get("return_num_input_tokens"):
            response["num_input_tokens"] = len(prompt_pieces(body["text_input"]))
        if body.get("return_num_output_tokens"):
            response["num_output_tokens"] = count
        return response

    async def _whole(self, body: dict[str, Any], plan: Plan, send: Send) -> None:
        if self.failure is not None and self.failure.kind == "hang":
            await hang_forever()
        if self.failure is not None and self.failure.kind == "malformed":
            await send_bytes(send, 200, b'{"text_output": ', "application/json")
            return
        text = "".join(plan.texts)
        if not body.get("exclude_input_in_output"):
            text = body["text_input"] + text
        await send_json(send, 200, self._response(body, text, len(plan.texts)))

    async def _stream(self, body: dict[str, Any], plan: Plan, send: Send) -> None:
        await start_response(send, 200, "text/event-stream")
        for index, text in enumerate(plan.texts):
            failure = self.failure_at(index)
            if failure is not None:
                await self._fail(failure, send)
                return
            await self.pace(index)
            event = orjson.dumps(self._response(body, text, 1))
            await send_chunk(send, b"data: " + event + b"\n\n")
        failure = self.failure_at(len(plan.texts))
        if failure is not None:
            await self._fail(failure, send)
            return
        await end_body(send)

    async def _fail(self, failure: Failure, send: Send) -> None:
        if failure.kind == "error_event":
            await send_chunk(send, b"data: " + orjson.dumps({"error": failure.message}) + b"\n\n")
            await end_body(send)
        elif failure.kind == "malformed":
            await send_chunk(send, b'data: {"text_output": "x", \n\n')
            await end_body(send)
        elif failure.kind == "drop":
            raise Dropped("connection cut mid-stream")
        else:
            await hang_forever()
