"""Kind ``triton``: TensorRT-LLM behind Triton's generate extension.

``/v2/models/{model}/generate_stream`` (SSE) or, with option ``stream: false`` for models
that are not decoupled, ``/generate``. Each response reports its own ``num_output_tokens``
(and ``num_input_tokens``) when asked, so usage is exact; there is no finish reason, so
``length`` is inferred when ``max_tokens`` tokens came. Errors arrive as
``{"error": "..."}``, also inside a 200 stream.

Triton turns a body key that is not one of the model's inputs into a request parameter,
which the ensemble ignores: a misnamed field is silently dropped. So the adapter reads the
model's inputs once (``GET /v2/models/{model}``) and speaks to what is there: ``seed`` or,
on tensorrtllm_backend ensembles up to v0.19, ``random_seed``; token counts only where the
ensemble has ``return_num_input_tokens`` / ``return_num_output_tokens`` (TensorRT-LLM's
``triton_backend`` since the move out of tensorrtllm_backend; without them the prompt is the
gateway's to count, and each streamed response is one token); and a vendor extra the model
has no input for is refused rather than lost.

Options: ``stream`` (true), ``token_counts`` (true: ask for them where the model has them),
``exclude_input_in_output`` (true), ``input_names`` (rename inputs for a custom ensemble,
e.g. ``{"seed": "random_seed"}``; wins over what is learned), ``max_context``,
``max_prompt`` (the engine's ``max_input_len``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any
from urllib.parse import quote

from adapters._batch import DeltaBatch
from adapters._deadline import Deadline
from adapters._errors import UpstreamSaid, said_error
from adapters._http import MALFORMED, HTTPBackend, loads
from adapters._prometheus import parse_metrics, total
from adapters.base import (
    BackendError,
    BadRequest,
    Capabilities,
    Delta,
    GenerationRequest,
    LoadSnapshot,
    Overloaded,
    UpstreamProtocolError,
    Usage,
)

_RESERVED = frozenset({"text_input", "max_tokens", "stream", "stop_words"})
_METRICS = (
    "nv_trt_llm_request_metrics",
    "nv_inference_pending_request_count",
    "nv_trt_llm_kv_cache_block_metrics",
)


class TritonBackend(HTTPBackend):
    """A Triton Inference Server serving a TensorRT-LLM model through ``generate``."""

    kind = "triton"

    def _configure(self, opts: Mapping[str, Any]) -> Capabilities:
        self._stream = bool(opts.get("stream", True))
        self._counts = bool(opts.get("token_counts", True))
        self._exclude_input = bool(opts.get("exclude_input_in_output", True))
        self._names: Mapping[str, str] = dict(opts.get("input_names") or {})
        self._inputs: dict[str, frozenset[str]] = {}  # model -> its input names, once read
        return Capabilities(
            stop=True,
            seed=True,
            max_context=opts.get("max_context"),
            max_prompt=opts.get("max_prompt"),
        )

    async def generate(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream one generation; closing the iterator drops the upstream call."""
        base = f"/v2/models/{quote(req.model, safe='')}"
        body = self._request(req, await self._model_inputs(req.model, base))
        deadline = Deadline(self.timeouts, self.name)
        prompt_tokens: int | None = None
        produced = 0
        source: AsyncGenerator[list[Any], None]
        if self._stream:
            source = self._events(f"{base}/generate_stream", body, deadline)
        else:
            source = self._single(f"{base}/generate", body, deadline)

        def read_event(data: Any, batch: DeltaBatch) -> None:
            nonlocal prompt_tokens, produced
            event = loads(data, self.name) if isinstance(data, str) else data
            if "error" in event:
                raise _error(event["error"], self.name)
            text = event.get("text_output") or ""
            if not isinstance(text, str):
                raise UpstreamProtocolError("text_output is not text", backend=self.name)
            count = event.get("num_output_tokens")
            # Without counts (older ensembles) each response is one decode step.
            tokens = int(count) if count is not None else (1 if text else 0)
            if event.get("num_input_tokens") is not None:
                prompt_tokens = int(event["num_input_tokens"])
            produced += tokens
            batch.add(text, tokens)

        async with aclosing(self._deltas(source, deadline, read_event)) as deltas:
            async for delta in deltas:
                yield delta
        yield Delta(
            finish_reason="length" if produced >= req.max_tokens else "stop",
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=produced),
        )

    async def _single(
        self, path: str, body: Mapping[str, Any], deadline: Deadline
    ) -> AsyncGenerator[list[Any], None]:
        """``/generate`` for non-decoupled models: the whole answer as one response."""
        yield [await self._post_json(path, body, deadline)]

    async def _model_inputs(self, model: str, base: str) -> frozenset[str] | None:
        """The model's input names from its metadata, read once; None while unreadable."""
        known = self._inputs.get(model)
        if known is None:
            fetched = await self._get(base)
            if fetched is None or fetched.status != 200:
                return None
            try:
                inputs = loads(fetched.body, self.name)["inputs"]
                known = frozenset(str(i["name"]) for i in inputs)
            except (UpstreamProtocolError, *MALFORMED):
                return None
            self._inputs[model] = known
        return known

    def _request(
        self, req: GenerationRequest, inputs: frozenset[str] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "text_input": req.prompt or "",
            "max_tokens": req.max_tokens,
            "stream": self._stream,
        }
        if self._exclude_input:
            body["exclude_input_in_output"] = True
        if self._counts and (inputs is None or "return_num_output_tokens" in inputs):
            body["return_num_input_tokens"] = True
            body["return_num_output_tokens"] = True
        if req.stop:
            body["stop_words"] = list(req.stop)
        for key, value in (
            ("temperature", req.temperature),
            ("top_p", req.top_p),
            ("seed", req.seed),
        ):
            if value is not None:
                body[key] = value
        for key, value in req.extra.items():  # top_k, bad_words, repetition_penalty, ...
            if key not in _RESERVED:
                body[key] = value
        names = dict(self._names)
        if inputs is not None and "seed" not in inputs and "random_seed" in inputs:
            names.setdefault("seed", "random_seed")  # tensorrtllm_backend up to v0.19
        if inputs is None:
            return {names.get(k, k): v for k, v in body.items()} if names else body
        asked = {*req.extra, "seed", "temperature", "top_p", "stop_words"}  # the client's
        sent: dict[str, Any] = {}
        for key, value in body.items():
            name = names.get(key, key)
            if name in inputs:
                sent[name] = value
            elif key in asked:  # Triton would drop it without a word
                param = "stop" if key == "stop_words" else key
                raise BadRequest(
                    f"The backend's model takes no '{key}'.", backend=self.name, param=param
                )
        return sent

    async def probe(self) -> LoadSnapshot:
        """``/v2/health/ready``; TRT-LLM request and KV-cache metrics from Triton's exporter."""
        load = None
        fetched = await self._metrics_text()
        if fetched is not None:
            samples = parse_metrics(fetched[0], _METRICS)
            running = total(samples, "nv_trt_llm_request_metrics", request_type="active")
            waiting = total(samples, "nv_trt_llm_request_metrics", request_type="waiting")
            if waiting is None:
                waiting = total(samples, "nv_inference_pending_request_count")
            used = total(samples, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="used")
            most = total(samples, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="max")
            load = LoadSnapshot(
                healthy=True,
                running=int(running) if running is not None else None,
                waiting=int(waiting) if waiting is not None else None,
                kv_usage=used / most if used is not None and most else None,
            )
        return await self._probe("/v2/health/ready", load)


def _error(message: object, backend: str) -> BackendError:
    """An error inside a 200 stream has no status; a full queue still means overloaded."""
    text = str(message)
    if "queue size" in text.lower():  # Triton's "Exceeds maximum queue size"
        return Overloaded("The backend is overloaded.", backend=backend, detail=text)
    return said_error(500, UpstreamSaid(text), backend)
