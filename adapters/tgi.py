"""Kind ``tgi``: Hugging Face text-generation-inference over its native API.

Streams ``/generate_stream`` (SSE: ``data:`` without a space, keep-alive comments, no
``[DONE]``; the last event carries ``details``). Echo with prompt logprobs needs
``decoder_input_details``, which only ``/generate`` offers, so echo requests use it.
``/info`` gives the limits that let us refuse an oversize request before sending it.

Options: ``max_stop_sequences``, ``max_total_tokens``, ``max_input_tokens`` (until ``/info``
has been read), ``max_top_n_tokens`` (5, TGI's default ``--max-top-n-tokens``), ``grammar``
(true: ``response_format`` becomes ``parameters.grammar``; false for a server started with
``--disable-grammar-support``). Tools need TGI's Messages API, which this adapter does not
speak: tool requests go to other backends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from adapters._batch import DeltaBatch
from adapters._deadline import Deadline
from adapters._errors import said_error, said_in
from adapters._http import MALFORMED, HTTPBackend, loads
from adapters._prometheus import parse_metrics, total
from adapters.base import (
    BackendError,
    BadRequest,
    Capabilities,
    Delta,
    FinishReason,
    GenerationRequest,
    LoadSnapshot,
    TokenLogprob,
    UpstreamProtocolError,
    Usage,
)

_RESERVED = frozenset(
    {"max_new_tokens", "details", "decoder_input_details", "stop", "best_of", "grammar"}
)
# error_type of TGI's `{"error", "error_type"}` -> the HTTP status the same error gets outside
# a stream (router/src/infer/mod.rs `InferError::error_type`, server.rs `From<InferError>`).
_ERROR_STATUS = {
    "generation": 424,
    "overloaded": 429,
    "validation": 422,
    "incomplete_generation": 500,
    "incomplete_generation_stream": 500,
    "template_error": 422,
    "missing_template_variable": 422,
    "tool_error": 422,
    "stream_serialization_error": 500,
}


class TGIBackend(HTTPBackend):
    """A text-generation-inference server reached over HTTP."""

    kind = "tgi"
    _info_read = False

    def _configure(self, opts: Mapping[str, Any]) -> Capabilities:
        self._limits: dict[str, int | None] = {
            "max_stop_sequences": opts.get("max_stop_sequences", 4),
            "max_total_tokens": opts.get("max_total_tokens"),
            "max_input_tokens": opts.get("max_input_tokens"),
        }
        return Capabilities(
            echo=True,
            logprobs=int(opts.get("max_top_n_tokens", 5)),
            stop=True,
            max_stop_sequences=self._limits["max_stop_sequences"],
            seed=True,
            structured=bool(opts.get("grammar", True)),
            prefix_cache=bool(opts.get("prefix_cache", True)),  # TGI 3's default
            max_context=self._limits["max_total_tokens"],
            max_prompt=self._limits["max_input_tokens"],
        )

    async def generate(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream one generation; closing the iterator drops the upstream call."""
        if not self._info_read:
            self._info_read = True  # once; later refreshes come from probe()
            await self._read_info()
        self._refuse_oversize(req)
        deadline = Deadline(self.timeouts, self.name)
        body = self._request(req)
        if req.echo:
            async for delta in self._whole(body, req, deadline):
                yield delta
            return
        final: Delta | None = None

        def read_event(data: str, batch: DeltaBatch) -> None:
            nonlocal final
            if final is not None:
                # Read on to the end of the body rather than stop: a response closed early
                # drops its keep-alive connection. Nothing follows details.
                return
            event = loads(data, self.name)
            if "error" in event:
                raise _event_error(event, self.name)
            token = event["token"]
            logprobs = [_logprob(token, event.get("top_tokens"))] if req.logprobs else None
            # Special tokens (EOS) count as generated but are not text.
            batch.add("" if token.get("special") else token["text"], 1, logprobs)
            details = event.get("details")
            if details is not None:
                final = self._final(details)

        events = self._events("/generate_stream", body, deadline)
        async with aclosing(self._deltas(events, deadline, read_event)) as deltas:
            async for delta in deltas:
                yield delta
        if final is None:
            raise UpstreamProtocolError("stream ended without its final details", backend=self.name)
        yield final

    async def _whole(
        self, body: dict[str, Any], req: GenerationRequest, deadline: Deadline
    ) -> AsyncIterator[Delta]:
        """``/generate`` with ``decoder_input_details``: the prompt's logprobs, then the text."""
        body["parameters"]["decoder_input_details"] = True
        answer = await self._post_json("/generate", body, deadline)
        try:
            details = answer["details"]
            prefill = details.get("prefill") or []
            yield Delta(
                text=req.prompt or "",
                logprobs=[TokenLogprob(t["text"], t.get("logprob")) for t in prefill],
                echo=True,
            )
            tokens = details.get("tokens") or []
            tops = details.get("top_tokens") or [None] * len(tokens)
            logprobs = [_logprob(t, top) for t, top in zip(tokens, tops, strict=False)]
            yield Delta(
                text=answer["generated_text"],
                tokens=int(details["generated_tokens"]),
                logprobs=logprobs if req.logprobs else None,
            )
            # /generate's details have no input_length: the prefill has one entry per token.
            yield self._final(details, prompt_tokens=len(prefill) or None)
        except MALFORMED as exc:
            raise UpstreamProtocolError("unreadable /generate answer", backend=self.name) from exc

    def _final(self, details: Mapping[str, Any], prompt_tokens: int | None = None) -> Delta:
        reason: FinishReason = "length" if details["finish_reason"] == "length" else "stop"
        prompt = details.get("input_length", prompt_tokens)
        usage = Usage(
            prompt_tokens=int(prompt) if prompt is not None else None,
            completion_tokens=int(details["generated_tokens"]),
        )
        return Delta(finish_reason=reason, usage=usage)

    def _request(self, req: GenerationRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"max_new_tokens": req.max_tokens, "details": True}
        # TGI refuses temperature <= 0 and top_p >= 1 (422): both mean "no change" there.
        if req.temperature is not None and req.temperature > 0:
            params["temperature"] = req.temperature
            params["do_sample"] = True
        if req.top_p is not None and 0 < req.top_p < 1:
            params["top_p"] = req.top_p
        if req.seed is not None:
            params["seed"] = req.seed
        if req.stop:
            params["stop"] = list(req.stop)
        if req.logprobs:
            params["top_n_tokens"] = req.logprobs
        if req.response_format is not None:
            params["grammar"] = _grammar(req.response_format)
        for key, value in req.extra.items():
            if key not in _RESERVED:
                params[key] = value
        return {"inputs": req.prompt or "", "parameters": params}

    def _refuse_oversize(self, req: GenerationRequest) -> None:
        """Refuse here what TGI would refuse with a 422 after a round trip."""
        most_stops = self._limits["max_stop_sequences"]
        if most_stops is not None and len(req.stop) > most_stops:
            raise BadRequest(
                f"at most {most_stops} stop sequences on this backend",
                backend=self.name,
                param="stop",
            )
        total_tokens = self._limits["max_total_tokens"]
        if total_tokens is not None and req.max_tokens > total_tokens - 1:
            raise BadRequest(
                f"max_tokens must leave room for the prompt within {total_tokens} tokens",
                backend=self.name,
                param="max_tokens",
            )

    async def _read_info(self) -> None:
        """Adopt the server's own limits from ``/info``; keep configured ones if unreadable."""
        response = await self._get("/info")
        if response is None or response.status != 200:
            return
        try:
            info = loads(response.body, self.name)
            limits = {
                "max_stop_sequences": info.get("max_stop_sequences"),
                "max_total_tokens": info.get("max_total_tokens"),
                # `max_input_length` before TGI 2.0
                "max_input_tokens": info.get("max_input_tokens", info.get("max_input_length")),
            }
        except (UpstreamProtocolError, *MALFORMED):
            return
        self._limits.update({k: int(v) for k, v in limits.items() if isinstance(v, int)})
        self.capabilities = replace(
            self.capabilities,
            max_stop_sequences=self._limits["max_stop_sequences"],
            max_context=self._limits["max_total_tokens"],
            max_prompt=self._limits["max_input_tokens"],
        )

    async def probe(self) -> LoadSnapshot:
        """``/health``, ``/info`` limits, and ``tgi_queue_size`` / ``tgi_batch_current_size``."""
        await self._read_info()
        load = None
        fetched = await self._metrics_text()
        if fetched is not None:
            samples = parse_metrics(fetched[0], ("tgi_queue_size", "tgi_batch_current_size"))
            waiting = total(samples, "tgi_queue_size")
            running = total(samples, "tgi_batch_current_size")
            load = LoadSnapshot(
                healthy=True,
                running=int(running) if running is not None else None,
                waiting=int(waiting) if waiting is not None else None,
            )
        return await self._probe("/health", load)


def _logprob(token: Mapping[str, Any], top: Sequence[Mapping[str, Any]] | None) -> TokenLogprob:
    alternatives = {t["text"]: t["logprob"] for t in top} if top else None
    return TokenLogprob(token["text"], token.get("logprob"), alternatives)


def _event_error(event: Mapping[str, Any], backend: str) -> BackendError:
    """TGI's in-stream ``{"error", "error_type"}`` event, classed as its HTTP twin would be."""
    status = _ERROR_STATUS.get(str(event.get("error_type")), 500)
    return said_error(status, said_in(event), backend)


def _grammar(response_format: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's ``response_format`` as TGI's ``parameters.grammar`` (a JSON Schema grammar;
    router/src/lib.rs ``GrammarType::Json``): any JSON object for ``json_object``."""
    if response_format.get("type") == "json_schema":
        schema = response_format["json_schema"].get("schema") or {"type": "object"}
        return {"type": "json", "value": schema}
    return {"type": "json", "value": {"type": "object"}}
