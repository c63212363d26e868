"""Every span, attribute, event and metric name Tollgate emits, in one place.

Follows the OpenTelemetry semantic conventions at ``SEMCONV_VERSION`` (GenAI and HTTP
registries; GenAI is still experimental, so the version is pinned and every name lives here).
Tollgate's own names are under ``tollgate.*``. The Prometheus names in the comments are what
``GET /metrics`` renders (dots become underscores, units become suffixes, counters get ``_total``).
"""

from __future__ import annotations

from typing import Final

SEMCONV_VERSION: Final = "1.37.0"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
SCOPE: Final = "tollgate"

# -- GenAI attributes ----------------------------------------------------------------------
OP_COMPLETION: Final = "text_completion"
OP_CHAT: Final = "chat"
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"  # the backend kind: vllm, tgi, ...
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_REQUEST_CHOICE_COUNT: Final = "gen_ai.request.choice.count"
GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
GEN_AI_REQUEST_PRESENCE_PENALTY: Final = "gen_ai.request.presence_penalty"
GEN_AI_REQUEST_FREQUENCY_PENALTY: Final = "gen_ai.request.frequency_penalty"
GEN_AI_REQUEST_TOP_K: Final = "gen_ai.request.top_k"  # from the vendor extras
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
TOKEN_INPUT: Final = "input"
TOKEN_OUTPUT: Final = "output"
# Content, recorded only when ``telemetry.record_content`` is set by the operator.
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"

# -- general and HTTP attributes -----------------------------------------------------------
ERROR_TYPE: Final = "error.type"
SERVER_ADDRESS: Final = "server.address"  # on CLIENT spans, the backend's host
SERVER_PORT: Final = "server.port"
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
URL_PATH: Final = "url.path"
URL_SCHEME: Final = "url.scheme"
USER_AGENT_ORIGINAL: Final = "user_agent.original"
CLIENT_ADDRESS: Final = "client.address"

# -- Tollgate's own attributes -------------------------------------------------------------
TOLLGATE_TENANT: Final = "tollgate.tenant"
TOLLGATE_BACKEND: Final = "tollgate.backend"  # configured backend name
TOLLGATE_POLICY: Final = "tollgate.policy"
TOLLGATE_COST_USD: Final = "tollgate.cost_usd"  # provisional cost
TOLLGATE_FALLBACKS: Final = "tollgate.fallbacks"  # failed attempts before the one that served
TOLLGATE_TTFT_S: Final = "tollgate.ttft_s"
TOLLGATE_REQUEST_ID: Final = "tollgate.request_id"
TOLLGATE_CANDIDATES: Final = "tollgate.candidates"  # backend names, best first
TOLLGATE_ATTEMPT: Final = "tollgate.attempt"  # 0 for the first try of a generation
TOLLGATE_CHOICE: Final = "tollgate.choice"  # choice index the attempt serves
TOLLGATE_RANK: Final = "tollgate.rank"
TOLLGATE_EST_TTFT_S: Final = "tollgate.estimate.ttft_s"
TOLLGATE_EST_TPOT_S: Final = "tollgate.estimate.tpot_s"
TOLLGATE_EST_USD_PER_MTOK: Final = "tollgate.estimate.usd_per_mtok_output"
TOLLGATE_EST_LOAD: Final = "tollgate.estimate.load"
TOLLGATE_BREAKER_STATE: Final = "tollgate.breaker.state"
# Whether the client asked for a stream (SERVER span). Semconv 1.37 has no such attribute;
# every attempt streams from its backend, so CLIENT spans do not carry it.
TOLLGATE_REQUEST_STREAM: Final = "tollgate.request.stream"

# -- spans and events ----------------------------------------------------------------------
SPAN_ADMISSION: Final = "tollgate.admission"
SPAN_ROUTING: Final = "tollgate.routing"
EVENT_ESTIMATE: Final = "tollgate.routing.estimate"  # one per ranked candidate

# -- metrics (Prometheus name after the arrow) ---------------------------------------------
METRIC_REQUEST_DURATION: Final = "gen_ai.server.request.duration"  # ..._seconds
METRIC_TTFT: Final = "gen_ai.server.time_to_first_token"  # ..._seconds
METRIC_TPOT: Final = "gen_ai.server.time_per_output_token"  # ..._seconds
METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"  # gen_ai_client_token_usage
# One per backend attempt, failed ones included: ..._seconds
METRIC_CLIENT_DURATION: Final = "gen_ai.client.operation.duration"
METRIC_COST: Final = "tollgate.cost"  # tollgate_cost_USD_total
METRIC_TOKENS_PER_DOLLAR: Final = "tollgate.tokens_per_dollar"  # per replica, since start
METRIC_REQUESTS: Final = "tollgate.requests"  # tollgate_requests_total
METRIC_ROUTING_DECISIONS: Final = "tollgate.routing.decisions"  # ..._total
METRIC_FALLBACKS: Final = "tollgate.routing.fallbacks"  # ..._total
METRIC_REJECTIONS: Final = "tollgate.rejections"  # tollgate_rejections_total
METRIC_AUTH_FAILURES: Final = "tollgate.auth.failures"  # tollgate_auth_failures_total
METRIC_IN_FLIGHT: Final = "tollgate.requests.in_flight"
METRIC_TENANT_BUDGET: Final = "tollgate.tenant.budget"  # tollgate_tenant_budget_USD
METRIC_BACKEND_HEALTHY: Final = "tollgate.backend.healthy"
METRIC_BACKEND_BREAKER: Final = "tollgate.backend.breaker"  # 1 for the current state
METRIC_BACKEND_IN_FLIGHT: Final = "tollgate.backend.in_flight"
# 1 while the tenancy store is away and limits hold per replica, on local shares.
METRIC_STORE_DEGRADED: Final = "tollgate.store.degraded"
# The autoscaling signal: instances the router wants per pool (HPA/KEDA scale on it), and
# the instances it sees, by state ("ready" serving, "up" billed including booting).
METRIC_POOL_DESIRED: Final = "tollgate.pool.desired_instances"
METRIC_POOL_INSTANCES: Final = "tollgate.pool.instances"
TOLLGATE_INSTANCE_STATE: Final = "tollgate.instance.state"
# Instance time billed per hourly backend since start, in dollars: the fleet's bill as routing
# sees it (every replica sees the same fleet: dashboards take the max over replicas). Less the
# cost attributed to requests, it is the idle spend.
METRIC_INSTANCE_COST: Final = "tollgate.backend.instance_cost"  # ..._USD_total
# The routing objectives, so latency panels draw them: ``tollgate.objective`` is ttft or tpot.
METRIC_OBJECTIVE: Final = "tollgate.routing.objective"  # tollgate_routing_objective_seconds
TOLLGATE_OBJECTIVE: Final = "tollgate.objective"

# Bucket boundaries the GenAI conventions recommend for each histogram.
DURATION_BUCKETS: Final = (
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
TTFT_BUCKETS: Final = (
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
TPOT_BUCKETS: Final = (
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
TOKEN_BUCKETS: Final = (
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
