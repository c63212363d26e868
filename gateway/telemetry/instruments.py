"""The metric instruments one app records into, and the gauges read from live state."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry.metrics import (
    CallbackOptions,
    Counter,
    Meter,
    Observation,
)
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext

from gateway.telemetry import semconv as sc

# The breaker states a gauge reports (1 for the current one, 0 for the others), so a panel
# can show the state without string values, which Prometheus cannot hold.
BREAKER_STATES = ("closed", "half_open", "open")

# A bucket's last sampled measurement: value, time (ns), span id, trace id.
Sample = tuple[float, int, int, int]


class LocalSum:
    """A sum per attribute set kept in a dict on the request path, reported at collection.

    A synchronous OpenTelemetry ``add`` hashes its attribute mapping and takes a lock on every
    call (about 15 µs here); summing into a dict keyed by a tuple costs well under 1 µs. The
    sums are exported through an observable counter (or gauge, for ``set``).
    """

    __slots__ = ("_keys", "_values")

    def __init__(self, *keys: str) -> None:
        self._keys = keys
        self._values: dict[tuple[str | int, ...], float] = {}

    def add(self, value: float, *labels: str | int) -> None:
        """Add ``value`` to the sum of the attribute set ``labels`` (in ``keys`` order)."""
        self._values[labels] = self._values.get(labels, 0.0) + value

    def set(self, value: float, *labels: str | int) -> None:
        """Replace the value of an attribute set (for gauges)."""
        self._values[labels] = value

    def observe(self, _: CallbackOptions) -> Iterable[Observation]:
        """Every attribute set's current value."""
        for labels, value in list(self._values.items()):
            attrs = {k: v for k, v in zip(self._keys, labels, strict=True) if v != ""}
            yield Observation(value, attrs)


class LocalHistogram:
    """Explicit-bucket histogram points per attribute set, kept in dicts on the request path
    and handed to the metric readers as cumulative OpenTelemetry histograms when they collect.

    A synchronous SDK ``record`` cleans and hashes its attributes, matches views and takes a
    lock (~16 µs here, five per request: ~8% of the gateway's CPU); this is a dict lookup and
    a bisect. Buckets follow OpenTelemetry's rule: bucket i holds (bounds[i-1], bounds[i]].

    Each bucket keeps the last measurement made in a sampled trace as its exemplar (the SDK's
    aligned-bucket reservoir with its trace-based filter), so that a slow bucket links to a
    trace of one of its requests. The span is passed in, not read from the context: the
    request path hands each hook its span.
    """

    __slots__ = (
        "_bounds",
        "_exemplars",
        "_keys",
        "_n",
        "_points",
        "description",
        "name",
        "unit",
    )

    def __init__(
        self, name: str, unit: str, description: str, bounds: Sequence[float], *keys: str
    ) -> None:
        self.name, self.unit, self.description = name, unit, description
        self._bounds = tuple(bounds)
        self._n = len(self._bounds) + 1  # buckets; count, sum, min, max, start follow them
        self._keys = keys
        # labels -> [bucket counts..., count, sum, min, max, start ns]
        self._points: dict[tuple[str | int, ...], list[float]] = {}
        # labels -> per bucket, its exemplar (None until a sampled measurement lands there)
        self._exemplars: dict[tuple[str | int, ...], list[Sample | None]] = {}

    def record(self, value: float, *labels: str | int, trace: SpanContext | None = None) -> None:
        """Add one measurement to the attribute set ``labels`` (in ``keys`` order, "" = absent);
        ``trace``, the context of a sampled span, makes it its bucket's exemplar."""
        point = self._points.get(labels)
        n = self._n
        if point is None:
            point = self._points[labels] = [0] * n + [0, 0.0, value, value, time.time_ns()]
        bucket = bisect_left(self._bounds, value)
        point[bucket] += 1
        point[n] += 1
        point[n + 1] += value
        if value < point[n + 2]:
            point[n + 2] = value
        if value > point[n + 3]:
            point[n + 3] = value
        if trace is not None:
            self._exemplify(labels, bucket, value, trace)

    def _exemplify(
        self, labels: tuple[str | int, ...], bucket: int, value: float, trace: SpanContext
    ) -> None:
        kept = self._exemplars.get(labels)
        if kept is None:
            kept = self._exemplars[labels] = [None] * self._n
        kept[bucket] = (value, time.time_ns(), trace.span_id, trace.trace_id)

    def metric(self, now_ns: int) -> Metric | None:
        """The cumulative points so far, or None before the first measurement.

        A periodic exporter calls this from its own thread: the dict and each point are copied
        first (each copy is one step under the GIL). A measurement being recorded at that very
        moment may show in its bucket but not yet in count and sum; the next export is whole.
        """
        n = self._n
        points = [
            HistogramDataPoint(
                attributes={k: v for k, v in zip(self._keys, labels, strict=True) if v != ""},
                start_time_unix_nano=int(p[n + 4]),
                time_unix_nano=now_ns,
                count=int(p[n]),
                sum=p[n + 1],
                bucket_counts=[int(c) for c in p[:n]],
                explicit_bounds=self._bounds,
                min=p[n + 2],
                max=p[n + 3],
                exemplars=_exemplars(self._exemplars.get(labels)),
            )
            for labels, p in [(labels, list(p)) for labels, p in list(self._points.items())]
        ]
        if not points:
            return None
        data = Histogram(points, AggregationTemporality.CUMULATIVE)
        return Metric(self.name, self.description, self.unit, data)


def _exemplars(kept: Sequence[Sample | None] | None) -> list[Exemplar]:
    """The buckets' exemplars in bucket order (copied first, as the points are)."""
    if kept is None:
        return []
    return [
        Exemplar({}, value, at, span_id=span_id, trace_id=trace_id)
        for value, at, span_id, trace_id in [e for e in list(kept) if e is not None]
    ]


class LocalExport:
    """Adds the ``LocalHistogram``s to what each metric reader receives when it collects.

    A reader's ``_receive_metrics`` is the hook every reader implements (Prometheus, periodic
    OTLP, in-memory); wrapping it puts these histograms beside the SDK's instruments, under the
    same instrumentation scope, in every export. The SDK calls it only for a collection that
    found SDK data; the app always has some (its observable gauges report on every collection).
    """

    def __init__(self, histograms: Sequence[LocalHistogram], scope: InstrumentationScope) -> None:
        self.histograms = list(histograms)
        self.scope = scope

    def attach(self, reader: MetricReader) -> None:
        """Make ``reader`` export the local histograms too."""
        receive = reader._receive_metrics

        def with_local(data: MetricsData, *args: object, **kwargs: object) -> None:
            receive(self.merge(data), *args, **kwargs)  # type: ignore[arg-type]

        setattr(reader, "_receive_metrics", with_local)  # noqa: B010

    def merge(self, data: MetricsData) -> MetricsData:
        """``data`` with the local histograms added to this scope's metrics."""
        now = time.time_ns()
        local = [m for h in self.histograms if (m := h.metric(now)) is not None]
        if not local or not data.resource_metrics:
            return data
        first, *others = data.resource_metrics
        scopes = list(first.scope_metrics)
        for i, scoped in enumerate(scopes):
            if scoped.scope.name == self.scope.name:
                scopes[i] = ScopeMetrics(scoped.scope, [*scoped.metrics, *local], scoped.schema_url)
                break
        else:
            scopes.append(ScopeMetrics(self.scope, local, self.scope.schema_url or ""))
        return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *others])


class NoHistogram:
    """What ``record`` goes to when no reader collects metrics."""

    __slots__ = ()

    def record(self, value: float, *labels: str | int, trace: SpanContext | None = None) -> None:
        """Nothing to keep."""


_NONE = NoHistogram()


@dataclass(slots=True)
class Instruments:
    """The instruments recorded once per request, never per chunk."""

    duration: LocalHistogram | NoHistogram  # operation, provider, model, backend, error type
    # per backend attempt: operation, provider, upstream model, server address and port,
    # backend, error type
    attempts: LocalHistogram | NoHistogram
    ttft: LocalHistogram | NoHistogram  # operation, provider, model, backend
    tpot: LocalHistogram | NoHistogram  # operation, provider, model, backend
    tokens: LocalHistogram | NoHistogram  # operation, provider, model, backend, tenant, type
    cost: LocalSum  # operation, provider, model, backend, tenant
    requests: LocalSum  # tenant, backend, policy, status, error type
    decisions: LocalSum  # policy, backend
    fallbacks: Counter
    rejections: Counter
    auth_failures: Counter  # error type (never the key)
    budget: LocalSum  # tenant

    @property
    def histograms(self) -> list[LocalHistogram]:
        """The request-path histograms that are kept (for export)."""
        kept = (self.duration, self.attempts, self.ttft, self.tpot, self.tokens)
        return [h for h in kept if isinstance(h, LocalHistogram)]


def create_instruments(meter: Meter, *, histograms: bool) -> Instruments:
    """Every instrument, with the buckets the GenAI conventions recommend; the request-path
    histograms are kept only when ``histograms`` (some reader exports them)."""
    base = (
        sc.GEN_AI_OPERATION_NAME,
        sc.GEN_AI_PROVIDER_NAME,
        sc.GEN_AI_REQUEST_MODEL,
        sc.TOLLGATE_BACKEND,
    )

    def histogram(
        name: str, unit: str, description: str, bounds: Sequence[float], *keys: str
    ) -> LocalHistogram | NoHistogram:
        return LocalHistogram(name, unit, description, bounds, *keys) if histograms else _NONE

    return Instruments(
        duration=histogram(
            sc.METRIC_REQUEST_DURATION,
            "s",
            "Time from admission to last byte",
            sc.DURATION_BUCKETS,
            *base,
            sc.ERROR_TYPE,
        ),
        attempts=histogram(
            sc.METRIC_CLIENT_DURATION,
            "s",
            "One backend attempt, from its start to its last byte or its failure",
            sc.DURATION_BUCKETS,
            sc.GEN_AI_OPERATION_NAME,
            sc.GEN_AI_PROVIDER_NAME,
            sc.GEN_AI_REQUEST_MODEL,
            sc.SERVER_ADDRESS,
            sc.SERVER_PORT,
            sc.TOLLGATE_BACKEND,
            sc.ERROR_TYPE,
        ),
        ttft=histogram(
            sc.METRIC_TTFT, "s", "Time to first token, fallbacks included", sc.TTFT_BUCKETS, *base
        ),
        tpot=histogram(
            sc.METRIC_TPOT, "s", "Time per output token after the first", sc.TPOT_BUCKETS, *base
        ),
        tokens=histogram(
            sc.METRIC_TOKEN_USAGE,
            "{token}",
            "Tokens per generation by type",
            sc.TOKEN_BUCKETS,
            *base,
            sc.TOLLGATE_TENANT,
            sc.GEN_AI_TOKEN_TYPE,
        ),
        cost=_observed_sum(
            meter,
            sc.METRIC_COST,
            LocalSum(
                sc.GEN_AI_OPERATION_NAME,
                sc.GEN_AI_PROVIDER_NAME,
                sc.GEN_AI_REQUEST_MODEL,
                sc.TOLLGATE_BACKEND,
                sc.TOLLGATE_TENANT,
            ),
            unit="USD",
            description="Provisional cost",
        ),
        requests=_observed_sum(
            meter,
            sc.METRIC_REQUESTS,
            LocalSum(
                sc.TOLLGATE_TENANT,
                sc.TOLLGATE_BACKEND,
                sc.TOLLGATE_POLICY,
                sc.HTTP_RESPONSE_STATUS_CODE,
                sc.ERROR_TYPE,
            ),
            unit="{request}",
            description="Admitted requests by outcome",
        ),
        decisions=_observed_sum(
            meter,
            sc.METRIC_ROUTING_DECISIONS,
            LocalSum(sc.TOLLGATE_POLICY, sc.TOLLGATE_BACKEND),
            unit="{decision}",
            description="Generations served, by routing policy and backend",
        ),
        fallbacks=meter.create_counter(
            sc.METRIC_FALLBACKS,
            unit="{attempt}",
            description="Attempts that failed before the first byte (the router fell back)",
        ),
        rejections=meter.create_counter(
            sc.METRIC_REJECTIONS,
            unit="{request}",
            description="Requests refused at admission (rate limits, budget)",
        ),
        auth_failures=meter.create_counter(
            sc.METRIC_AUTH_FAILURES,
            unit="{request}",
            description="Requests refused before admission: no, malformed or unknown API key, "
            "or the store could not check it",
        ),
        budget=_observed_sum(
            meter,
            sc.METRIC_TENANT_BUDGET,
            LocalSum(sc.TOLLGATE_TENANT),
            unit="USD",
            description="A tenant's monthly budget",
            gauge=True,
        ),
    )


def _observed_sum(
    meter: Meter, name: str, local: LocalSum, *, unit: str, description: str, gauge: bool = False
) -> LocalSum:
    create = meter.create_observable_gauge if gauge else meter.create_observable_counter
    create(name, [local.observe], unit=unit, description=description)
    return local


@dataclass(slots=True)
class TokensPerDollar:
    """Output tokens and cost per (tenant, backend) since start, for the observable gauge."""

    totals: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, tenant: str, backend: str, output_tokens: int, cost_usd: float) -> None:
        """Account one generation (two float additions: cheap enough for the request path)."""
        pair = self.totals.setdefault((tenant, backend), [0.0, 0.0])
        pair[0] += output_tokens
        pair[1] += cost_usd

    def observe(self, _: CallbackOptions) -> Iterable[Observation]:
        """One observation per pair that has spent anything."""
        for (tenant, backend), (tokens, cost) in list(self.totals.items()):
            if cost > 0:
                attrs = {sc.TOLLGATE_TENANT: tenant, sc.TOLLGATE_BACKEND: backend}
                yield Observation(tokens / cost, attrs)


BackendHealth = Callable[[], Mapping[str, Mapping[str, object]]]


def watch_fleet(
    meter: Meter,
    health: BackendHealth,
    kinds: Mapping[str, str],
    in_flight: Callable[[], int],
    tokens_per_dollar: TokensPerDollar,
) -> None:
    """Observable gauges read at collection time, so they cost the request path nothing."""

    def healthy(_: CallbackOptions) -> Iterable[Observation]:
        for name, h in health().items():
            yield Observation(1 if h["healthy"] else 0, _backend(name, kinds))

    def breaker(_: CallbackOptions) -> Iterable[Observation]:
        for name, h in health().items():
            for state in BREAKER_STATES:
                attrs = {**_backend(name, kinds), sc.TOLLGATE_BREAKER_STATE: state}
                yield Observation(1 if h["breaker"] == state else 0, attrs)

    def backend_in_flight(_: CallbackOptions) -> Iterable[Observation]:
        for name, h in health().items():
            value = h["in_flight"]
            yield Observation(value if isinstance(value, int | float) else 0, _backend(name, kinds))

    def requests_in_flight(_: CallbackOptions) -> Iterable[Observation]:
        yield Observation(in_flight())

    def pool_counts(key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            for name, h in health().items():
                counts = h.get("instances")
                if not isinstance(counts, Mapping):
                    continue
                if key == "desired":
                    yield Observation(counts["desired"], _backend(name, kinds))
                    continue
                for state in ("ready", "up"):
                    attrs = {**_backend(name, kinds), sc.TOLLGATE_INSTANCE_STATE: state}
                    yield Observation(counts[state], attrs)
        return observe

    meter.create_observable_gauge(
        sc.METRIC_BACKEND_HEALTHY, [healthy], unit="1", description="1 when the last probe passed"
    )
    meter.create_observable_gauge(
        sc.METRIC_BACKEND_BREAKER,
        [breaker],
        unit="1",
        description="Circuit breaker state: 1 for the current state",
    )
    meter.create_observable_gauge(
        sc.METRIC_BACKEND_IN_FLIGHT,
        [backend_in_flight],
        unit="{request}",
        description="Generations in flight per backend",
    )
    meter.create_observable_gauge(
        sc.METRIC_POOL_DESIRED,
        [pool_counts("desired")],
        unit="{instance}",
        description="Instances the router wants per backend: what a pool's autoscaler tracks",
    )
    meter.create_observable_gauge(
        sc.METRIC_POOL_INSTANCES,
        [pool_counts("instances")],
        unit="{instance}",
        description="Instances per backend as routing sees them: ready, and up (billed)",
    )
    meter.create_observable_up_down_counter(
        sc.METRIC_IN_FLIGHT,
        [requests_in_flight],
        unit="{request}",
        description="Admitted requests not yet finished",
    )
    meter.create_observable_gauge(
        sc.METRIC_TOKENS_PER_DOLLAR,
        [tokens_per_dollar.observe],
        unit="{token}",
        description="Output tokens per provisional dollar since start (per replica; "
        "dashboards divide rates instead)",
    )


def watch_store(meter: Meter, degraded: Callable[[], bool]) -> None:
    """The store's mode as a gauge, read at collection time."""

    def observe(_: CallbackOptions) -> Iterable[Observation]:
        yield Observation(1 if degraded() else 0)

    meter.create_observable_gauge(
        sc.METRIC_STORE_DEGRADED,
        [observe],
        unit="1",
        description="1 while the tenancy store is unreachable and limits hold per replica",
    )


def _backend(name: str, kinds: Mapping[str, str]) -> dict[str, str]:
    return {sc.TOLLGATE_BACKEND: name, sc.GEN_AI_PROVIDER_NAME: kinds.get(name, "")}


def watch_costs(
    meter: Meter,
    instance_usd: Callable[[], Mapping[str, float]],
    objectives: Mapping[str, float | None],
) -> None:
    """The fleet's instance bill (the metering's own instance-time) and the routing
    objectives, read at collection time."""

    def bill(_: CallbackOptions) -> Iterable[Observation]:
        for name, usd in instance_usd().items():
            yield Observation(usd, {sc.TOLLGATE_BACKEND: name})

    def objective(_: CallbackOptions) -> Iterable[Observation]:
        for name, seconds in objectives.items():
            if seconds is not None:
                yield Observation(seconds, {sc.TOLLGATE_OBJECTIVE: name})

    meter.create_observable_counter(
        sc.METRIC_INSTANCE_COST,
        [bill],
        unit="USD",
        description="Instance time billed per hourly backend since start (the same fleet on "
        "every replica: take the max)",
    )
    meter.create_observable_gauge(
        sc.METRIC_OBJECTIVE, [objective], unit="s", description="Routing objectives (TTFT, TPOT)"
    )
