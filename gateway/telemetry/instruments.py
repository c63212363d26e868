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
    _Gauge,
)

from gateway.telemetry import semconv as sc

# The breaker states a gauge reports (1 for the current one, 0 for the others), so a panel
# can show the state without string values, which Prometheus cannot hold.
BREAKER_STATES = ("closed", "half_open", "open")


@dataclass(slots=True)
class Instruments:
    """Synchronous instruments; recorded once per request, never per chunk."""

    duration: Histogram
    ttft: Histogram
    tpot: Histogram
    tokens: Histogram
    cost: Counter
    requests: Counter
    decisions: Counter
    fallbacks: Counter
    rejections: Counter
    budget: _Gauge


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
        cost=meter.create_counter(sc.METRIC_COST, unit="USD", description="Provisional cost"),
        requests=meter.create_counter(
            sc.METRIC_REQUESTS, unit="{request}", description="Admitted requests by outcome"
        ),
        decisions=meter.create_counter(
            sc.METRIC_ROUTING_DECISIONS,
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
        budget=meter.create_gauge(
            sc.METRIC_TENANT_BUDGET, unit="USD", description="A tenant's monthly budget"
        ),
    )


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
