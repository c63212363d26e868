"""Kind ``jetstream``: a JetStream server (TPU) over gRPC, ``jetstream_proto.Orchestrator``.

JetStream reports no usage and no finish reason: completion tokens are counted from each
sample's ``token_ids``, prompt tokens are left to the gateway, and the finish reason is
``length`` when ``max_tokens`` tokens came, else ``stop``. The request carries only the
fields both 0.2.x and current servers know (``max_tokens`` and the prompt) unless options
ask for more: ``priority`` and ``session_cache`` (0.2.x), ``num_samples``, ``has_bos`` and
``lora_adapter_id`` (current). Other options: ``max_context`` (the server's
``max_target_length``) and ``max_prompt`` (its ``max_prefill_length``).

Responses are parsed here rather than by grpc's deserializer so that an unreadable
message surfaces as ``UpstreamProtocolError`` instead of a generic RPC failure.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import httpx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from grpc import aio

from adapters._deadline import Deadline
from adapters._errors import client_text
from adapters._http import DEFAULT_TIMEOUTS, build_client
from adapters._prometheus import mean, parse_metrics, total
from adapters.base import (
    BackendError,
    BadRequest,
    Capabilities,
    Delta,
    GenerationRequest,
    LoadSnapshot,
    Overloaded,
    Timeout,
    Timeouts,
    Unavailable,
    UpstreamProtocolError,
    Usage,
)

# Generated code is kept out of mypy's sight (its stubs are not strict-clean): typed as Any.
pb: Any = importlib.import_module("adapters.jetstream_pb.jetstream_pb2")
DECODE = "/jetstream_proto.Orchestrator/Decode"
HEALTH_CHECK = "/jetstream_proto.Orchestrator/HealthCheck"
# Current servers (jetstream/core/metrics/prometheus.py): every backlog in one gauge, and
# slots in use two ways; 0.2.x: the prefill backlog and the slots available.
_METRICS = (
    "num_requests_waiting",
    "jetstream_prefill_backlog_size",
    "jetstream_slots_used_percentage",
    "kv_cache_utilization_perc",
    "jetstream_slots_available_percentage",
)
_BAD_REQUEST = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
}


def _raw(data: bytes) -> bytes:
    return data


class JetStreamBackend:
    """A JetStream orchestrator reached over gRPC (plaintext ``grpc://``, TLS ``grpcs://``)."""

    kind = "jetstream"

    def __init__(
        self,
        name: str,
        url: str,
        models: Mapping[str, str],
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        api_key: str | None = None,
        tls_ca_file: str | None = None,
        tls_insecure: bool = False,
        metrics_url: str | None = None,
        options: Mapping[str, Any] | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if tls_insecure:
            raise ValueError("gRPC cannot skip certificate checks; give tls_ca_file instead")
        self.name = name
        self.models: Mapping[str, str] = dict(models)
        self.timeouts = timeouts
        self.options: Mapping[str, Any] = dict(options or {})
        # A token prompt makes JetStream answer with token ids and no text, which the client
        # cannot read; the gateway decodes token prompts with the model's tokenizer instead.
        # JetStream keeps the last ``max_prefill_length`` tokens of a longer prompt, silently:
        # its limits (``max_prompt``: the prefill length; ``max_context``: the target length)
        # let the gateway refuse first.
        self.capabilities = Capabilities(
            max_context=self.options.get("max_context"),
            max_prompt=self.options.get("max_prompt"),
        )
        self._target, secure = _target(url)
        if channel_credentials is None and (secure or tls_ca_file):
            root = open(tls_ca_file, "rb").read() if tls_ca_file else None  # noqa: SIM115
            channel_credentials = grpc.ssl_channel_credentials(root_certificates=root)
        self._credentials = channel_credentials
        # grpc.aio binds a channel to the event loop current when it is made, so it is
        # made on first use, inside the loop that serves (not where the app was built).
        self._grpc: aio.Channel | None = None
        self._rpcs: tuple[Any, Any] | None = None  # Decode and HealthCheck on that channel
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._metrics_url = metrics_url
        self._metrics: httpx.AsyncClient | None = None
        if metrics_url:
            self._metrics = build_client(
                metrics_url,
                timeouts,
                api_key=None,
                tls_ca_file=tls_ca_file,
                tls_insecure=False,
                max_connections=2,
            )

    async def generate(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream one generation; closing the iterator cancels the RPC."""
        deadline = Deadline(self.timeouts, self.name)
        await self._connected()
        call = self._calls()[0](
            self._request(req).SerializeToString(),
            timeout=self.timeouts.total,
            metadata=self._metadata,
        )
        produced = 0
        try:
            while True:
                try:
                    raw = await deadline.run(call.read())
                except aio.AioRpcError as exc:
                    raise _rpc_error(exc, self.name) from exc
                if raw is aio.EOF:
                    break
                for text, tokens in self._samples(raw):
                    deadline.started = True
                    produced += tokens
                    yield Delta(text=text, tokens=tokens)
        finally:
            call.cancel()  # a no-op once the RPC has ended
        yield Delta(
            finish_reason="length" if produced >= req.max_tokens else "stop",
            usage=Usage(prompt_tokens=None, completion_tokens=produced),
        )

    def _samples(self, raw: Any) -> Sequence[tuple[str, int]]:
        """(text, tokens) of the first sample; nothing for initial or empty responses."""
        try:
            response = pb.DecodeResponse.FromString(raw)
        except (DecodeError, TypeError) as exc:
            raise UpstreamProtocolError("unreadable DecodeResponse", backend=self.name) from exc
        if not response.HasField("stream_content") or not response.stream_content.samples:
            return ()  # initial_content: the request was admitted, nothing decoded yet
        sample = response.stream_content.samples[0]
        # Without ids (some servers) a non-empty sample is one decode step; 0.2.x ends
        # every stream with an empty sample, which carries nothing.
        tokens = len(sample.token_ids) or (1 if sample.text else 0)
        return ((sample.text, tokens),) if tokens else ()

    def _request(self, req: GenerationRequest) -> Any:
        request = pb.DecodeRequest(max_tokens=req.max_tokens)
        if req.prompt is None and req.prompt_token_ids is not None:
            request.token_content.token_ids.extend(req.prompt_token_ids)
        else:
            request.text_content.text = req.prompt or ""
        opts = self.options
        for key in ("priority", "session_cache", "num_samples", "has_bos", "lora_adapter_id"):
            if key in opts:
                setattr(request, key, opts[key])
        return request

    @property
    def _channel(self) -> aio.Channel:
        """The gRPC channel, made on first use in the running event loop."""
        if self._grpc is None:
            self._grpc = (
                aio.secure_channel(self._target, self._credentials)
                if self._credentials is not None
                else aio.insecure_channel(self._target)
            )
        return self._grpc

    def _calls(self) -> tuple[Any, Any]:
        """The Decode and HealthCheck callables on the channel."""
        if self._rpcs is None:
            channel = self._channel
            self._rpcs = (
                channel.unary_stream(DECODE, request_serializer=_raw, response_deserializer=_raw),
                channel.unary_unary(
                    HEALTH_CHECK, request_serializer=_raw, response_deserializer=_raw
                ),
            )
        return self._rpcs

    async def _connected(self) -> None:
        """Fail fast when the server refuses connections; wait at most ``connect`` otherwise."""
        state = self._channel.get_state(try_to_connect=True)
        try:
            async with asyncio.timeout(self.timeouts.connect):
                while state is not grpc.ChannelConnectivity.READY:
                    if state in (
                        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                        grpc.ChannelConnectivity.SHUTDOWN,
                    ):
                        raise Unavailable(f"cannot connect ({state.name})", backend=self.name)
                    await self._channel.wait_for_state_change(state)
                    state = self._channel.get_state()
        except TimeoutError:
            raise Timeout("connect deadline passed", backend=self.name) from None

    async def probe(self) -> LoadSnapshot:
        """``HealthCheck.is_live``, and load from the Prometheus metrics when configured."""
        try:
            raw = await self._calls()[1](
                pb.HealthCheckRequest().SerializeToString(),
                timeout=self.timeouts.connect,
                metadata=self._metadata,
            )
            live = pb.HealthCheckResponse.FromString(raw).is_live
            detail = "" if live else "HealthCheck says not live"
        except (aio.AioRpcError, DecodeError) as exc:
            live, detail = False, f"HealthCheck failed: {exc}"
        load = await self._load() if live else None
        if load is None:
            return LoadSnapshot(healthy=live, detail=detail)
        return LoadSnapshot(
            healthy=True, running=None, waiting=load.waiting, kv_usage=load.kv_usage
        )

    async def _load(self) -> LoadSnapshot | None:
        if self._metrics is None or self._metrics_url is None:
            return None
        try:
            response = await self._metrics.get(self._metrics_url, timeout=self.timeouts.connect)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        samples = parse_metrics(response.text, _METRICS)
        used = mean(samples, "jetstream_slots_used_percentage")
        if used is None and (percent := mean(samples, "kv_cache_utilization_perc")) is not None:
            used = percent / 100
        free = mean(samples, "jetstream_slots_available_percentage")
        if used is None and free is not None:
            used = 1.0 - free
        # num_requests_waiting counts the prefill, transfer and generate backlogs; 0.2.x has
        # only the prefill backlog (its transfer/generate gauges, where exported, are stale).
        waiting = total(samples, "num_requests_waiting")
        if waiting is None:
            waiting = total(samples, "jetstream_prefill_backlog_size")
        return LoadSnapshot(
            healthy=True, waiting=int(waiting) if waiting is not None else None, kv_usage=used
        )

    async def aclose(self) -> None:
        """Close the channel and the metrics client."""
        if self._grpc is not None:
            await self._grpc.close()
            self._grpc = self._rpcs = None
        if self._metrics is not None:
            await self._metrics.aclose()


def _target(url: str) -> tuple[str, bool]:
    """``host:port`` and whether TLS was asked for by the scheme."""
    for scheme, secure in (("grpcs://", True), ("https://", True), ("grpc://", False)):
        if url.startswith(scheme):
            return url[len(scheme) :].rstrip("/"), secure
    return url.rstrip("/"), False


def _rpc_error(exc: aio.AioRpcError, backend: str) -> BackendError:
    code = exc.code()
    detail = f"upstream {code.name}: {exc.details()}"
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        wait = _retry_after(exc) or 1.0
        return Overloaded(
            "The backend is overloaded.", backend=backend, retry_after=wait, detail=detail
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return Timeout("The backend timed out.", backend=backend, detail=detail)
    if code in _BAD_REQUEST:
        return BadRequest(client_text(exc.details() or ""), backend=backend, detail=detail)
    if code is grpc.StatusCode.DATA_LOSS:
        return UpstreamProtocolError(
            "The backend's answer broke off.", backend=backend, detail=detail
        )
    # UNAVAILABLE is "down"; UNKNOWN/INTERNAL/ABORTED/auth failures: try another backend.
    return Unavailable(
        f"The backend failed ({code.name}).", backend=backend, detail=detail
    )


def _retry_after(exc: aio.AioRpcError) -> float | None:
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after":
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None
