"""A fake JetStream orchestrator: a real ``grpc.aio`` server in its own thread and loop.

Serves ``jetstream_proto.Orchestrator/Decode`` (server-streaming) and ``HealthCheck`` as
``jetstream/core/orchestrator.py`` does, in 0.2.2 (``version="0.2"``) and at
AI-Hypercomputer/JetStream acd4f5a (``version="current"``): no ``initial_content`` in either
(the field is a placeholder no server fills); a sample per decode step with its text and
token ids; at the step a sample completes, an empty sample (``process_result_tokens`` in
``jetstream/engine/token_utils.py``). A token prompt gets token ids only (client-side
tokenization). No stop sequences, no usage, no finish reason.

Metrics (``jetstream/core/metrics/prometheus.py``, with ``metrics=True``, on a port of
their own): 0.2.2 exports ``jetstream_prefill_backlog_size`` and
``jetstream_slots_available_percentage``; current servers ``jetstream_prefill_backlog_size``,
``jetstream_transfer_backlog_size`` and ``jetstream_generate_backlog_size`` (read once at
start-up, so stale), ``jetstream_slots_used_percentage``, ``num_requests_waiting`` (every
backlog, live) and ``kv_cache_utilization_perc`` (0-100).

Failures map to gRPC statuses: ``Failure("status", error_type="RESOURCE_EXHAUSTED")``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import grpc
from grpc import aio

from adapters.jetstream import pb
from tests.fakes._server import (
    DEFAULT_TOKENS,
    Failure,
    FakeHTTPUpstream,
    FakeUpstream,
    Recorded,
    Send,
    hang_forever,
    metrics_text,
    send_bytes,
)


class _Metrics(FakeHTTPUpstream):
    """JetStream's Prometheus exporter (a separate port, as in the real server)."""

    def __init__(self, owner: FakeJetStream) -> None:
        super().__init__()
        self.owner = owner

    async def handle(self, request: Recorded, send: Send) -> None:
        if self.owner.metrics_body is not None:
            await send_bytes(send, 200, self.owner.metrics_body, "text/plain; version=0.0.4")
            return
        load = self.owner.load
        host = {"id": "fake"}
        samples = [("jetstream_prefill_backlog_size", host, load["backlog"])]
        for idx in ("0", "1"):
            slot = {"id": "fake", "idx": idx}
            if self.owner.version == "0.2":
                samples.append(("jetstream_slots_available_percentage", slot, 1 - load["used"]))
            else:
                samples += [
                    ("jetstream_transfer_backlog_size", slot, 0.0),  # stale: read at start-up
                    ("jetstream_generate_backlog_size", slot, 0.0),
                    ("jetstream_slots_used_percentage", slot, load["used"]),
                ]
        if self.owner.version != "0.2":
            waiting = load["backlog"] + load["generate_backlog"]
            samples += [
                ("num_requests_waiting", host, waiting),
                ("kv_cache_utilization_perc", host, load["used"] * 100),
            ]
        body = metrics_text(samples)
        await send_bytes(send, 200, body, "text/plain; version=0.0.4")


class FakeJetStream(FakeUpstream):
    """Scriptable JetStream upstream on a real gRPC socket."""

    def __init__(
        self,
        tokens: Sequence[str] = DEFAULT_TOKENS,
        *,
        failure: Failure | None = None,
        api_key: str | None = None,
        version: Literal["current", "0.2"] = "current",
        metrics: bool = False,
    ) -> None:
        super().__init__(tokens, failure=failure, api_key=api_key)
        self.version = version
        self.load = {"backlog": 5, "generate_backlog": 1, "used": 0.5}
        self.metrics_body: bytes | None = None  # set: the exporter answers exactly this
        self._metrics = _Metrics(self) if metrics else None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"grpc://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        return f"{self._metrics.url}/metrics" if self._metrics else None

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(ready),), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake JetStream did not start")
        if self._metrics is not None:
            self._metrics.start()

    def stop(self) -> None:
        if self._metrics is not None:
            self._metrics.stop()
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._thread = self._loop = self._stop = None

    async def _serve(self, ready: threading.Event) -> None:
        server = aio.server()
        handlers = {
            "Decode": grpc.unary_stream_rpc_method_handler(
                self._decode,
                request_deserializer=pb.DecodeRequest.FromString,
                response_serializer=_as_bytes,  # raw bytes, so a test can send garbage
            ),
            "HealthCheck": grpc.unary_unary_rpc_method_handler(
                self._health_check,
                request_deserializer=pb.HealthCheckRequest.FromString,
                response_serializer=pb.HealthCheckResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("jetstream_proto.Orchestrator", handlers),)
        )
        self.port = server.add_insecure_port(f"{self.host}:0")
        await server.start()
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        await self._stop.wait()
        await server.stop(grace=None)

    async def _health_check(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        return pb.HealthCheckResponse(is_live=self.healthy)

    async def _decode(
        self, request: Any, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        metadata = {k: str(v) for k, v in context.invocation_metadata() or ()}
        self.requests.append(Recorded("POST", "Decode", metadata, request))
        self.received.set()
        if self.api_key and metadata.get("authorization") != f"Bearer {self.api_key}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        failure = self.failure
        if failure is not None and failure.kind == "status":
            await _abort(context, failure)
        try:
            async for message in self._responses(request, context):
                yield message
        except asyncio.CancelledError:
            self.cancelled.set()  # the client cancelled the RPC or went away
            raise
        self.completed.set()

    async def _responses(
        self, request: Any, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        text_prompt = request.WhichOneof("content") == "text_content"
        plan = self.plan(request.max_tokens)
        for index, (text, token_id) in enumerate(zip(plan.texts, plan.ids, strict=True)):
            failure = self.failure_at(index)
            if failure is not None:
                async for message in self._fail(failure, context):
                    yield message
            await self.pace(index)
            sample = pb.DecodeResponse.StreamContent.Sample(token_ids=[token_id])
            if text_prompt:
                sample.text = text
            yield _content(sample)
        failure = self.failure_at(len(plan.texts))
        if failure is not None:
            async for message in self._fail(failure, context):
                yield message
        if plan.reason != "length":  # the step that sampled the stop token: an empty sample
            yield _content(pb.DecodeResponse.StreamContent.Sample())

    async def _fail(
        self, failure: Failure, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        if failure.kind == "error_event":
            await _abort(context, failure)
        elif failure.kind == "malformed":
            yield b"\x1a\xff\xff\xff\x0f"  # a length-delimited field running past the end
        elif failure.kind == "drop":
            raise RuntimeError("orchestrator crashed mid-stream")
        else:
            await hang_forever()


def _as_bytes(message: bytes) -> bytes:
    return message


def _content(sample: Any) -> bytes:
    content = pb.DecodeResponse.StreamContent(samples=[sample])
    return bytes(pb.DecodeResponse(stream_content=content).SerializeToString())


async def _abort(context: aio.ServicerContext[Any, Any], failure: Failure) -> None:
    code = grpc.StatusCode[failure.error_type or "INTERNAL"]
    await context.abort(code, failure.message, trailing_metadata=tuple(failure.headers.items()))
