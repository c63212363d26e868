"""The metric instruments one app records into, and the gauges read from live state."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry.metrics import (
    CallbackOptions,
    Counter,
    Histogram,
    Meter,
    Observation,
)

from gateway.telemetry import semconv as sc

# The breaker states a gauge reports (1 for the current one, 0 for the others), so a panel
# can show the state without string values, which Prometheus cannot hold.
BREAKER_STATES = ("closed", "half_open", "open")


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


@dataclass(slots=True)
class Instruments:
    """The instruments recorded once per request, never per chunk."""

    duration: Histogram
    ttft: Histogram
    tpot: Histogram
    tokens: Histogram
    cost: LocalSum  # operation, provider, model, backend, tenant
    requests: LocalSum  # tenant, backend, policy, status, error type
    decisions: LocalSum  # policy, backend
    fallbacks: Counter
    rejections: Counter
    budget: LocalSum  # tenant


def create_instruments(meter: Meter) -> Instruments:
    """Create every synchronous instrument, with the buckets the GenAI conventions recommend."""
    return Instruments(
        duration=meter.create_histogram(
            sc.METRIC_REQUEST_DURATION,
            unit="s",
            description="Time from admission to last byte",
            explicit_bucket_boundaries_advisory=sc.DURATION_BUCKETS,
        ),
        ttft=meter.create_histogram(
            sc.METRIC_TTFT,
            unit="s",
            description="Time to first token, fallbacks included",
            explicit_bucket_boundaries_advisory=sc.TTFT_BUCKETS,
        ),
        tpot=meter.create_histogram(
            sc.METRIC_TPOT,
            unit="s",
            description="Time per output token after the first",
            explicit_bucket_boundaries_advisory=sc.TPOT_BUCKETS,
        ),
        tokens=meter.create_histogram(
            sc.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Tokens per generation by type",
            explicit_bucket_boundaries_advisory=sc.TOKEN_BUCKETS,
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


def _backend(name: str, kinds: Mapping[str, str]) -> dict[str, str]:
    return {sc.TOLLGATE_BACKEND: name, sc.GEN_AI_PROVIDER_NAME: kinds.get(name, "")}
