"""``Telemetry``: the tracer and instruments one app records into, with the request path's hooks.

Every hook checks ``span.is_recording()`` before it builds attributes, so with tracing off a
request pays for a few no-op calls; metrics are recorded once per request, in ``request_done``
and ``generation_done`` (and once per failed attempt, in ``attempt_failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import orjson
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    INVALID_SPAN,
    NoOpTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    TracerProvider,
)
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry

from gateway.errors import http_answer
from gateway.telemetry import semconv as sc
from gateway.telemetry.instruments import (
    BackendHealth,
    LocalExport,
    TokensPerDollar,
    create_instruments,
    watch_costs,
    watch_fleet,
    watch_store,
)
from gateway.telemetry.servers import Server, server_of

if TYPE_CHECKING:
    from adapters.base import Backend, GenerationRequest
    from gateway.openai.generation import Generation
    from gateway.openai.jobs import Job
    from gateway.openai.responses import Endpoint
    from gateway.routing.policies import Estimate
    from gateway.tenancy.models import UsageRecord

VERSION = "0.1.0"


class Telemetry:
    """The tracer and instruments one app uses; no-ops unless a tracer provider or metric
    readers are given.

    The tracer provider and the readers are passed in (tests use in-memory ones); the meter
    provider is built here over the readers, so that each of them also exports the
    request-path histograms. Nothing is set globally. ``registry`` is what ``GET /metrics``
    renders, when a Prometheus reader feeds it.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        metric_readers: Sequence[MetricReader] = (),
        *,
        resource: Resource | None = None,
        record_content: bool = False,
        registry: CollectorRegistry | None = None,
        on_shutdown: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.tracing = tracer_provider is not None and not isinstance(
            tracer_provider, NoOpTracerProvider
        )
        self.tracer = (tracer_provider or NoOpTracerProvider()).get_tracer(
            sc.SCOPE, VERSION, schema_url=sc.SCHEMA_URL
        )
        self._on_shutdown = list(on_shutdown)
        meter_provider: MeterProvider = NoOpMeterProvider()
        if metric_readers:
            sdk_provider = SdkMeterProvider(metric_readers=metric_readers, resource=resource)
            self._on_shutdown.append(sdk_provider.shutdown)
            meter_provider = sdk_provider
        self.meter = meter_provider.get_meter(sc.SCOPE, VERSION, schema_url=sc.SCHEMA_URL)
        self.record_content = record_content
        self.registry = registry
        self.metrics = create_instruments(self.meter, histograms=bool(metric_readers))
        # The request-path histograms are kept locally; each reader exports them beside the
        # SDK's own instruments.
        export = LocalExport(
            self.metrics.histograms, InstrumentationScope(sc.SCOPE, VERSION, sc.SCHEMA_URL)
        )
        for reader in metric_readers:
            export.attach(reader)
        self.tokens_per_dollar = TokensPerDollar()
        self._servers: dict[str, Server] = {}  # backend name -> where it listens

    def watch(
        self, health: BackendHealth, kinds: Mapping[str, str], in_flight: Callable[[], int]
    ) -> None:
        """Register the gauges read from live state (backend health, breakers, in flight)."""
        watch_fleet(self.meter, health, kinds, in_flight, self.tokens_per_dollar)

    def locate(self, urls: Mapping[str, str | None]) -> None:
        """Learn where each backend listens, from its configured url, once: the
        ``server.address``/``server.port`` of its attempts. A backend without a url (the
        embedded engine) has none."""
        for name, url in urls.items():
            server = server_of(url) if url else None
            if server is not None:
                self._servers[name] = server

    def auth_failed(self, exc: BaseException) -> None:
        """A request refused before it had a tenant: counted by the error the client got."""
        self.metrics.auth_failures.add(1, {sc.ERROR_TYPE: error_type(exc)})

    def watch_costs(
        self,
        instance_usd: Callable[[], Mapping[str, float]],
        objectives: Mapping[str, float | None],
    ) -> None:
        """Register the fleet's instance bill (idle spend follows from it) and the objectives."""
        watch_costs(self.meter, instance_usd, objectives)

    def watch_store(self, degraded: Callable[[], bool]) -> None:
        """Register the gauge that says whether limits are per replica (the store is away)."""
        watch_store(self.meter, degraded)

    async def aclose(self) -> None:
        """Flush and stop the providers this object built (not those a caller passed in)."""
        for stop in self._on_shutdown:
            await asyncio.to_thread(stop)

    # -- stages of a request -----------------------------------------------------------------

    def current(self, span: Span) -> contextlib.AbstractContextManager[object]:
        """Make ``span`` the parent of what runs inside (the HTTP client's own spans)."""
        if not span.is_recording():
            return contextlib.nullcontext()
        return trace.use_span(span, record_exception=False, set_status_on_exception=False)

    def admitting(self, tenant: str) -> Stage:
        """The admission span; a rejection it sees is counted by tenant and reason."""
        span: Span = INVALID_SPAN
        if self.tracing:
            attributes = {sc.TOLLGATE_TENANT: tenant}
            span = self.tracer.start_span(sc.SPAN_ADMISSION, attributes=attributes)
        return Stage(span, self, tenant)

    def routing(self, policy: str) -> Stage:
        """The routing span; ``Stage.ranked`` records why each candidate stands where it does."""
        span: Span = INVALID_SPAN
        if self.tracing:
            span = self.tracer.start_span(sc.SPAN_ROUTING, attributes={sc.TOLLGATE_POLICY: policy})
        return Stage(span, self, None)

    def request_started(self, span: Span, job: Job) -> None:
        """The GenAI facts of the request on its SERVER span."""
        if not span.is_recording():
            return
        first = job.requests[0]
        span.set_attributes(
            _drop_none(
                {
                    sc.GEN_AI_OPERATION_NAME: _operation(job.endpoint),
                    sc.GEN_AI_REQUEST_MODEL: job.model_id,
                    sc.GEN_AI_REQUEST_MAX_TOKENS: job.max_tokens,
                    sc.GEN_AI_REQUEST_TEMPERATURE: first.temperature,
                    sc.GEN_AI_REQUEST_TOP_P: first.top_p,
                    sc.GEN_AI_REQUEST_TOP_K: _top_k(first),
                    sc.GEN_AI_REQUEST_PRESENCE_PENALTY: first.presence_penalty,
                    sc.GEN_AI_REQUEST_FREQUENCY_PENALTY: first.frequency_penalty,
                    sc.GEN_AI_REQUEST_STOP_SEQUENCES: job.stops or None,
                    sc.GEN_AI_REQUEST_CHOICE_COUNT: len(job.requests)
                    if len(job.requests) > 1
                    else None,
                    sc.TOLLGATE_REQUEST_STREAM: job.stream,
                    sc.TOLLGATE_TENANT: job.principal.tenant.id,
                    sc.TOLLGATE_POLICY: job.policy,
                }
            )
        )

    # -- backend attempts -------------------------------------------------------------------

    def start_attempt(
        self,
        backend: Backend,
        request: GenerationRequest,
        attempt: int,
        choice: int,
        endpoint: Endpoint,
    ) -> Span:
        """A CLIENT span for one try on one backend, named ``{operation} {model}``.

        The operation is the client's endpoint: a chat request stays ``chat`` when the gateway
        rendered its template into a prompt for a backend without a chat endpoint.
        """
        if not self.tracing:
            return INVALID_SPAN
        op = _operation(endpoint)
        server = self._servers.get(backend.name)
        attributes = _drop_none(
            {
                sc.GEN_AI_OPERATION_NAME: op,
                sc.GEN_AI_PROVIDER_NAME: backend.kind,
                sc.GEN_AI_REQUEST_MODEL: request.model,
                sc.GEN_AI_REQUEST_MAX_TOKENS: request.max_tokens,
                sc.GEN_AI_REQUEST_TEMPERATURE: request.temperature,
                sc.GEN_AI_REQUEST_TOP_P: request.top_p,
                sc.GEN_AI_REQUEST_TOP_K: _top_k(request),
                sc.GEN_AI_REQUEST_PRESENCE_PENALTY: request.presence_penalty,
                sc.GEN_AI_REQUEST_FREQUENCY_PENALTY: request.frequency_penalty,
                sc.GEN_AI_REQUEST_STOP_SEQUENCES: request.stop or None,
                sc.GEN_AI_REQUEST_SEED: request.seed,
                sc.SERVER_ADDRESS: server.address if server else None,
                sc.SERVER_PORT: server.port if server else None,
                sc.TOLLGATE_BACKEND: backend.name,
                sc.TOLLGATE_ATTEMPT: attempt,
                sc.TOLLGATE_CHOICE: choice,
            }
        )
        if self.record_content:
            attributes[sc.GEN_AI_INPUT_MESSAGES] = _input_messages(request)
        return self.tracer.start_span(
            f"{op} {request.model}", kind=SpanKind.CLIENT, attributes=attributes
        )

    def attempt_failed(
        self,
        span: Span,
        backend: Backend,
        exc: BaseException,
        policy: str,
        *,
        endpoint: Endpoint,
        model: str,
        started: float,
    ) -> None:
        """An attempt ended before its first token (or was replaced by a restart): counted,
        timed from ``started`` (monotonic) on the upstream ``model``, and its span closed."""
        kind = error_type(exc)
        self.metrics.fallbacks.add(
            1,
            {
                sc.TOLLGATE_POLICY: policy,
                sc.TOLLGATE_BACKEND: backend.name,
                sc.ERROR_TYPE: kind,
            },
        )
        self._attempt_took(
            time.monotonic() - started, endpoint, backend, model, kind, _sampled(span)
        )
        if span.is_recording():
            _fail(span, kind, exc)
            span.end()

    def generation_done(
        self,
        job: Job,
        gen: Generation,
        prompt_tokens: int,
        output_tokens: int,
        cost_usd: float,
        decode_s: float,
    ) -> None:
        """Per-generation metrics, and the attempt's CLIENT span completed and ended."""
        backend = gen.backend
        tenant = job.principal.tenant.id
        base = (_operation(job.endpoint), backend.kind, job.model_id, backend.name)
        trace = _sampled(gen.span)
        upstream = backend.models.get(job.model_id)
        m = self.metrics
        m.ttft.record(gen.ttft_s, *base, trace=trace)
        if output_tokens > 1 and decode_s > 0:
            m.tpot.record(decode_s / (output_tokens - 1), *base, trace=trace)
        m.tokens.record(prompt_tokens, *base, tenant, sc.TOKEN_INPUT, trace=trace)
        m.tokens.record(output_tokens, *base, tenant, sc.TOKEN_OUTPUT, trace=trace)
        self._attempt_took(
            (gen.ended_at or time.monotonic()) - gen.attempt_at,
            job.endpoint,
            backend,
            upstream or job.model_id,
            error_type(gen.error) if gen.error is not None else "",
            trace,
        )
        m.cost.add(
            cost_usd, base[0], backend.kind, job.model_id, backend.name,
            tenant,
        )
        m.decisions.add(1, job.policy, backend.name)
        self.tokens_per_dollar.add(tenant, backend.name, output_tokens, cost_usd)
        span = gen.span
        if not span.is_recording():
            return
        span.set_attributes(
            _drop_none(
                {
                    sc.GEN_AI_RESPONSE_MODEL: upstream,
                    sc.GEN_AI_RESPONSE_FINISH_REASONS: [gen.finish_reason]
                    if gen.finish_reason
                    else None,
                    sc.GEN_AI_USAGE_INPUT_TOKENS: prompt_tokens,
                    sc.GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens,
                    sc.TOLLGATE_COST_USD: cost_usd,
                    sc.TOLLGATE_TTFT_S: gen.ttft_s,
                }
            )
        )
        if self.record_content and gen.transcript is not None:
            span.set_attribute(sc.GEN_AI_OUTPUT_MESSAGES, _output_messages(gen))
        if gen.error is not None:
            _fail(span, error_type(gen.error), gen.error)
        span.end()

    def request_done(
        self, span: Span, job: Job, record: UsageRecord, gens: Sequence[Generation]
    ) -> None:
        """Per-request metrics, and the outcome on the SERVER span."""
        first = gens[0] if gens else None
        failure = _failure(record.status, gens)
        m = self.metrics
        m.requests.add(
            1, record.tenant, record.backend, job.policy, record.status, failure or ""
        )
        m.duration.record(
            record.duration_s,
            _operation(job.endpoint),
            first.backend.kind if first else "",
            job.model_id,
            record.backend,
            failure or "",
            trace=_sampled(span),
        )
        budget = job.principal.tenant.limits.monthly_budget_usd
        if budget is not None:
            m.budget.set(budget, record.tenant)
        if not span.is_recording():
            return
        reasons = [g.finish_reason for g in gens if g.finish_reason]
        span.set_attributes(
            _drop_none(
                {
                    sc.GEN_AI_PROVIDER_NAME: first.backend.kind if first else None,
                    sc.GEN_AI_RESPONSE_MODEL: job.model_id if first else None,
                    sc.GEN_AI_RESPONSE_ID: job.envelope.id,
                    sc.GEN_AI_RESPONSE_FINISH_REASONS: reasons or None,
                    sc.GEN_AI_USAGE_INPUT_TOKENS: record.prompt_tokens,
                    sc.GEN_AI_USAGE_OUTPUT_TOKENS: record.completion_tokens,
                    sc.TOLLGATE_BACKEND: record.backend or None,
                    sc.TOLLGATE_COST_USD: record.cost_usd,
                    sc.TOLLGATE_FALLBACKS: sum(g.fallbacks for g in gens),
                    sc.TOLLGATE_TTFT_S: record.ttft_s,
                }
            )
        )
        if failure is not None and record.status >= 500:
            span.set_attribute(sc.ERROR_TYPE, failure)
            span.set_status(Status(StatusCode.ERROR, failure))

    def _attempt_took(
        self,
        seconds: float,
        endpoint: Endpoint,
        backend: Backend,
        model: str,
        failure: str,
        trace: SpanContext | None,
    ) -> None:
        """One ``gen_ai.client.operation.duration`` measurement ("" = no error)."""
        server = self._servers.get(backend.name)
        port = server.port if server is not None else None
        self.metrics.attempts.record(
            seconds,
            _operation(endpoint),
            backend.kind,
            model,
            server.address if server is not None else "",
            "" if port is None else port,
            backend.name,
            failure,
            trace=trace,
        )


class Stage:
    """A span around one stage of the request (admission, routing), used with ``with``."""

    __slots__ = ("_telemetry", "_tenant", "span")

    def __init__(self, span: Span, telemetry: Telemetry, tenant: str | None) -> None:
        self.span = span
        self._telemetry = telemetry
        self._tenant = tenant

    def __enter__(self) -> Stage:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _: TracebackType | None
    ) -> None:
        if exc is not None:
            reason = error_type(exc)
            if self._tenant is not None:
                self._telemetry.metrics.rejections.add(
                    1, {sc.TOLLGATE_TENANT: self._tenant, sc.ERROR_TYPE: reason}
                )
            if self.span.is_recording():
                _fail(self.span, reason, exc)
        self.span.end()

    def ranked(self, plan: Sequence[Estimate]) -> None:
        """Record the candidates in rank order, each with what routing predicted for it."""
        span = self.span
        if not span.is_recording():
            return
        span.set_attribute(sc.TOLLGATE_CANDIDATES, [e.backend.name for e in plan])
        for rank, est in enumerate(plan):
            span.add_event(
                sc.EVENT_ESTIMATE,
                {
                    sc.TOLLGATE_RANK: rank,
                    sc.TOLLGATE_BACKEND: est.backend.name,
                    sc.GEN_AI_PROVIDER_NAME: est.backend.kind,
                    sc.TOLLGATE_EST_TTFT_S: est.ttft_s,
                    sc.TOLLGATE_EST_TPOT_S: est.tpot_s,
                    sc.TOLLGATE_EST_USD_PER_MTOK: est.usd_per_output_token * 1e6,
                    sc.TOLLGATE_EST_LOAD: est.load,
                },
            )


def error_type(exc: BaseException) -> str:
    """A low-cardinality ``error.type``: the OpenAI error code the client sees."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    answer = http_answer(exc)
    return answer.code or answer.type


def _failure(status: int, gens: Sequence[Generation]) -> str | None:
    for gen in gens:
        if gen.error is not None:
            return error_type(gen.error)
    if status == 499:
        return "cancelled"
    return str(status) if status >= 400 else None


def _fail(span: Span, kind: str, exc: BaseException) -> None:
    span.set_attribute(sc.ERROR_TYPE, kind)
    span.set_status(Status(StatusCode.ERROR, kind))
    if not isinstance(exc, asyncio.CancelledError | GeneratorExit):
        span.record_exception(exc)


def _operation(endpoint: str) -> str:
    return sc.OP_CHAT if endpoint == "chat" else sc.OP_COMPLETION


def _sampled(span: Span) -> SpanContext | None:
    """The span's context when its trace is sampled: what makes a measurement an exemplar."""
    context = span.get_span_context()
    return context if context.trace_flags.sampled else None


def _top_k(request: GenerationRequest) -> float | None:
    """``top_k`` from the vendor extras, when the client sent a number."""
    value = request.extra.get("top_k")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _drop_none(values: Mapping[str, AttributeValue | None]) -> dict[str, AttributeValue]:
    """Attributes without the ``None`` values OpenTelemetry refuses."""
    return {k: v for k, v in values.items() if v is not None}


def _input_messages(request: GenerationRequest) -> str:
    if request.messages is not None:
        messages = [
            {"role": m.role, "parts": [{"type": "text", "content": m.content}]}
            for m in request.messages
        ]
    else:
        messages = [{"role": "user", "parts": [{"type": "text", "content": request.prompt or ""}]}]
    return orjson.dumps(messages).decode()


def _output_messages(gen: Generation) -> str:
    text = "".join(gen.transcript or ())
    message = {
        "role": "assistant",
        "parts": [{"type": "text", "content": text}],
        "finish_reason": gen.finish_reason or "error",
    }
    return orjson.dumps([message]).decode()
