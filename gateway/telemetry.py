"""OpenTelemetry set-up and every span, attribute and metric name Tollgate emits.

Follows the GenAI semantic conventions at ``SEMCONV_VERSION``. Providers are passed in
explicitly (tests use in-memory readers); nothing is installed globally.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    NoOpMeterProvider,
    UpDownCounter,
)
from opentelemetry.metrics import Meter as OtelMeter
from opentelemetry.trace import NoOpTracerProvider, Tracer, TracerProvider

SEMCONV_VERSION = "1.37.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

# -- span names and attributes (GenAI conventions) ----------------------------------------
OP_COMPLETION = "text_completion"
OP_CHAT = "chat"
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"

# -- Tollgate's own --------------------------------------------------------------------
TOLLGATE_TENANT = "tollgate.tenant"
TOLLGATE_BACKEND = "tollgate.backend"
TOLLGATE_POLICY = "tollgate.policy"
TOLLGATE_COST_USD = "tollgate.cost_usd"
TOLLGATE_FALLBACKS = "tollgate.fallbacks"
TOLLGATE_TTFT_S = "tollgate.ttft_s"
TOLLGATE_CANDIDATES = "tollgate.candidates"
TOLLGATE_ATTEMPT = "tollgate.attempt"

SPAN_ADMISSION = "tollgate.admission"
SPAN_ROUTING = "tollgate.routing"
SPAN_SETTLE = "tollgate.settle"

# -- metric names ----------------------------------------------------------------------
METRIC_REQUEST_DURATION = "gen_ai.server.request.duration"
METRIC_TTFT = "gen_ai.server.time_to_first_token"
METRIC_TPOT = "gen_ai.server.time_per_output_token"
METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"
METRIC_COST = "tollgate.cost"
METRIC_REQUESTS = "tollgate.requests"
METRIC_ROUTING_DECISIONS = "tollgate.routing.decisions"
METRIC_FALLBACKS = "tollgate.routing.fallbacks"
METRIC_REJECTIONS = "tollgate.rejections"
METRIC_IN_FLIGHT = "tollgate.requests.in_flight"

# Bucket boundaries the GenAI conventions recommend.
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
TPOT_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
)
TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)


@dataclass(slots=True)
class Instruments:
    """The metric instruments serving records into."""

    duration: Histogram
    ttft: Histogram
    tpot: Histogram
    tokens: Histogram
    cost: Counter
    requests: Counter
    decisions: Counter
    fallbacks: Counter
    rejections: Counter
    in_flight: UpDownCounter


class Telemetry:
    """The tracer and instruments one app uses; no-ops unless providers are given."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        record_content: bool = False,
    ) -> None:
        self.tracer: Tracer = (tracer_provider or NoOpTracerProvider()).get_tracer(
            "tollgate", schema_url=SCHEMA_URL
        )
        meter: OtelMeter = (meter_provider or NoOpMeterProvider()).get_meter(
            "tollgate", schema_url=SCHEMA_URL
        )
        self.record_content = record_content
        self.metrics = Instruments(
            duration=meter.create_histogram(
                METRIC_REQUEST_DURATION,
                unit="s",
                description="Time to last byte",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            ),
            ttft=meter.create_histogram(
                METRIC_TTFT,
                unit="s",
                description="Time to first token",
                explicit_bucket_boundaries_advisory=TTFT_BUCKETS,
            ),
            tpot=meter.create_histogram(
                METRIC_TPOT,
                unit="s",
                description="Time per output token after the first",
                explicit_bucket_boundaries_advisory=TPOT_BUCKETS,
            ),
            tokens=meter.create_histogram(
                METRIC_TOKEN_USAGE,
                unit="{token}",
                description="Tokens used per request",
                explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
            ),
            cost=meter.create_counter(METRIC_COST, unit="USD", description="Provisional cost"),
            requests=meter.create_counter(METRIC_REQUESTS, unit="{request}"),
            decisions=meter.create_counter(METRIC_ROUTING_DECISIONS, unit="{decision}"),
            fallbacks=meter.create_counter(METRIC_FALLBACKS, unit="{fallback}"),
            rejections=meter.create_counter(METRIC_REJECTIONS, unit="{request}"),
            in_flight=meter.create_up_down_counter(METRIC_IN_FLIGHT, unit="{request}"),
        )


def attrs(**values: object) -> Mapping[str, object]:
    """Attributes without the ``None`` values OpenTelemetry refuses."""
    return {k: v for k, v in values.items() if v is not None}
