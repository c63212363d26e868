"""``jetstream_proto.Orchestrator`` over the engine's batch loop: ``Decode`` and ``HealthCheck``.

Requests are read as JetStream's orchestrator reads them (acd4f5a): a text prompt is tokenized
here, a token prompt is taken as ids (and answered with ids only), and BOS is put in front of
either unless ``has_bos`` says it is there; ``num_samples`` 0 means 1. The engine decodes
greedily: the protocol carries no sampling settings. Where JetStream would cut or ignore, this
server refuses with a status the adapter maps: ``INVALID_ARGUMENT`` for a prompt past the
context, a bad ``num_samples`` or ``max_tokens``, or a LoRA adapter; ``RESOURCE_EXHAUSTED`` (with
``retry-after``) when the queue is full; ``UNAVAILABLE`` while loading or draining.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from grpc import aio

from engine.errors import EngineClosed, PromptTooLong, QueueFull
from engine.server.metrics import ServerMetrics
from engine.server.samples import Step, StepAssembler
from engine.serving import GenerationParams, GenerationServer

# The generated module of adapters/jetstream.proto, the wire contract both sides share.
pb: Any = importlib.import_module("adapters.jetstream_pb.jetstream_pb2")
SERVICE = "jetstream_proto.Orchestrator"
RETRY_AFTER_S = "1"


class Orchestrator:
    """Answers one engine's RPCs; ``engine`` is None until loaded, ``draining`` at shutdown."""

    def __init__(self, metrics: ServerMetrics | None = None) -> None:
        self.engine: GenerationServer | None = None
        self.draining = False
        self._metrics = metrics

    @property
    def live(self) -> bool:
        """What ``HealthCheck`` answers: loaded and not shutting down."""
        return self.engine is not None and not self.draining

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's method handlers, to add to a ``grpc.aio`` server."""
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Decode": grpc.unary_stream_rpc_method_handler(
                    self.decode,
                    request_deserializer=pb.DecodeRequest.FromString,
                    response_serializer=pb.DecodeResponse.SerializeToString,
                ),
                "HealthCheck": grpc.unary_unary_rpc_method_handler(
                    self.health_check,
                    request_deserializer=pb.HealthCheckRequest.FromString,
                    response_serializer=pb.HealthCheckResponse.SerializeToString,
                ),
            },
        )

    async def health_check(self, request: Any, context: aio.ServicerContext) -> Any:
        """``is_live`` once the model is loaded, until shutdown begins."""
        return pb.HealthCheckResponse(is_live=self.live)

    async def decode(self, request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        """Stream one generation; a cancelled RPC cancels the request and frees its slots."""
        engine = self.engine
        if engine is None or self.draining:
            why = "the server is shutting down" if self.draining else "the model is still loading"
            await context.abort(grpc.StatusCode.UNAVAILABLE, why)
            return
        started = time.perf_counter()
        try:
            prompt, with_text = _prompt(request, engine)
            params = GenerationParams(
                max_tokens=request.max_tokens, temperature=0.0, n=_samples(request, engine)
            )
            stream = engine.stream(prompt, params)
        except Exception as error:
            await _abort(context, error)
            return
        # As JetStream ties its return channel to the RPC: however the RPC ends (the client
        # cancels, the drain's grace runs out while a response is being sent), the request
        # leaves the engine and frees its slots; a no-op once it has finished.
        context.add_done_callback(lambda _: engine.cancel(stream.request_id))
        steps = StepAssembler(params.n, with_text)
        produced, answered = 0, False
        try:
            async for chunk in stream:
                produced += len(chunk.token_ids)
                for step in steps.add(chunk):
                    if not answered and self._metrics is not None:
                        self._metrics.time_to_first_token.observe(time.perf_counter() - started)
                    answered = True
                    yield _response(step)
        except Exception as error:  # the batch loop failed this request, or closed
            await _abort(context, error)
            return
        finally:
            await stream.aclose()
        if self._metrics is not None:
            self._metrics.completed(len(prompt), produced)


def _prompt(request: Any, engine: GenerationServer) -> tuple[list[int], bool]:
    """The prompt's token ids (BOS first unless ``has_bos``), and whether it came as text."""
    if request.lora_adapter_id:
        raise ValueError("this server serves no LoRA adapters; leave lora_adapter_id empty")
    tokenizer = engine.tokenizer
    bos = [] if request.has_bos else [tokenizer.bos_id]
    kind = request.WhichOneof("content")
    if kind == "text_content":
        return tokenizer.encode(request.text_content.text, add_bos=not request.has_bos), True
    if kind == "token_content":
        ids = list(request.token_content.token_ids)
        _check_vocabulary(ids, engine.engine.config.vocab_size)
        return bos + ids, False
    raise ValueError("the request has no prompt: set text_content or token_content")


def _check_vocabulary(ids: Sequence[int], vocab_size: int) -> None:
    outside = [t for t in ids if not 0 <= t < vocab_size]
    if outside:
        raise ValueError(f"token id {outside[0]} is outside the vocabulary (0 to {vocab_size - 1})")


def _samples(request: Any, engine: GenerationServer) -> int:
    samples = int(request.num_samples) or 1
    slots = engine.engine.max_slots
    if not 1 <= samples <= slots:
        raise ValueError(f"num_samples must be between 1 and {slots} (this server's decode slots)")
    return samples


def _response(step: Step) -> Any:
    content = pb.DecodeResponse.StreamContent(
        samples=[
            pb.DecodeResponse.StreamContent.Sample(text=s.text, token_ids=s.token_ids) for s in step
        ]
    )
    return pb.DecodeResponse(stream_content=content)


async def _abort(context: aio.ServicerContext, error: Exception) -> None:
    """End the RPC with the status that says what went wrong."""
    if isinstance(error, (PromptTooLong, ValueError)):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    elif isinstance(error, QueueFull):
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"The prefill queue is full ({error}); you may retry this request.",
            trailing_metadata=(("retry-after", RETRY_AFTER_S),),
        )
    elif isinstance(error, EngineClosed):
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the engine has stopped")
    else:
        await context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
