"""Tollgate's names against the official ones in ``opentelemetry-semantic-conventions``.

Production code keeps its own copies (``gateway/telemetry/semconv.py``, pinned at one
version); this is where a misspelt or renamed name would show.
"""

from __future__ import annotations

from collections.abc import Callable
from unittest.mock import Mock

import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics
from opentelemetry.semconv.attributes import (
    client_attributes,
    error_attributes,
    http_attributes,
    server_attributes,
    url_attributes,
    user_agent_attributes,
)

from gateway.telemetry import semconv as sc
from gateway.telemetry.instruments import LocalHistogram, create_instruments

ATTRIBUTES = [
    (sc.GEN_AI_OPERATION_NAME, gen_ai.GEN_AI_OPERATION_NAME),
    (sc.GEN_AI_PROVIDER_NAME, gen_ai.GEN_AI_PROVIDER_NAME),
    (sc.GEN_AI_REQUEST_MODEL, gen_ai.GEN_AI_REQUEST_MODEL),
    (sc.GEN_AI_RESPONSE_MODEL, gen_ai.GEN_AI_RESPONSE_MODEL),
    (sc.GEN_AI_RESPONSE_ID, gen_ai.GEN_AI_RESPONSE_ID),
    (sc.GEN_AI_REQUEST_MAX_TOKENS, gen_ai.GEN_AI_REQUEST_MAX_TOKENS),
    (sc.GEN_AI_REQUEST_TEMPERATURE, gen_ai.GEN_AI_REQUEST_TEMPERATURE),
    (sc.GEN_AI_REQUEST_TOP_P, gen_ai.GEN_AI_REQUEST_TOP_P),
    (sc.GEN_AI_REQUEST_TOP_K, gen_ai.GEN_AI_REQUEST_TOP_K),
    (sc.GEN_AI_REQUEST_SEED, gen_ai.GEN_AI_REQUEST_SEED),
    (sc.GEN_AI_REQUEST_CHOICE_COUNT, gen_ai.GEN_AI_REQUEST_CHOICE_COUNT),
    (sc.GEN_AI_REQUEST_STOP_SEQUENCES, gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES),
    (sc.GEN_AI_REQUEST_PRESENCE_PENALTY, gen_ai.GEN_AI_REQUEST_PRESENCE_PENALTY),
    (sc.GEN_AI_REQUEST_FREQUENCY_PENALTY, gen_ai.GEN_AI_REQUEST_FREQUENCY_PENALTY),
    (sc.GEN_AI_RESPONSE_FINISH_REASONS, gen_ai.GEN_AI_RESPONSE_FINISH_REASONS),
    (sc.GEN_AI_USAGE_INPUT_TOKENS, gen_ai.GEN_AI_USAGE_INPUT_TOKENS),
    (sc.GEN_AI_USAGE_OUTPUT_TOKENS, gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS),
    (sc.GEN_AI_TOKEN_TYPE, gen_ai.GEN_AI_TOKEN_TYPE),
    (sc.GEN_AI_INPUT_MESSAGES, gen_ai.GEN_AI_INPUT_MESSAGES),
    (sc.GEN_AI_OUTPUT_MESSAGES, gen_ai.GEN_AI_OUTPUT_MESSAGES),
    (sc.ERROR_TYPE, error_attributes.ERROR_TYPE),
    (sc.SERVER_ADDRESS, server_attributes.SERVER_ADDRESS),
    (sc.SERVER_PORT, server_attributes.SERVER_PORT),
    (sc.HTTP_REQUEST_METHOD, http_attributes.HTTP_REQUEST_METHOD),
    (sc.HTTP_ROUTE, http_attributes.HTTP_ROUTE),
    (sc.HTTP_RESPONSE_STATUS_CODE, http_attributes.HTTP_RESPONSE_STATUS_CODE),
    (sc.URL_PATH, url_attributes.URL_PATH),
    (sc.URL_SCHEME, url_attributes.URL_SCHEME),
    (sc.USER_AGENT_ORIGINAL, user_agent_attributes.USER_AGENT_ORIGINAL),
    (sc.CLIENT_ADDRESS, client_attributes.CLIENT_ADDRESS),
]
VALUES = [
    (sc.OP_CHAT, gen_ai.GenAiOperationNameValues.CHAT.value),
    (sc.OP_COMPLETION, gen_ai.GenAiOperationNameValues.TEXT_COMPLETION.value),
    (sc.TOKEN_INPUT, gen_ai.GenAiTokenTypeValues.INPUT.value),
    (sc.TOKEN_OUTPUT, gen_ai.GenAiTokenTypeValues.OUTPUT.value),
]
Create = Callable[..., object]
METRICS: list[tuple[str, Create]] = [
    (sc.METRIC_REQUEST_DURATION, gen_ai_metrics.create_gen_ai_server_request_duration),
    (sc.METRIC_TTFT, gen_ai_metrics.create_gen_ai_server_time_to_first_token),
    (sc.METRIC_TPOT, gen_ai_metrics.create_gen_ai_server_time_per_output_token),
    (sc.METRIC_TOKEN_USAGE, gen_ai_metrics.create_gen_ai_client_token_usage),
    (sc.METRIC_CLIENT_DURATION, gen_ai_metrics.create_gen_ai_client_operation_duration),
]


@pytest.mark.parametrize(("ours", "official"), ATTRIBUTES + VALUES)
def test_attribute_names_and_values_are_the_official_ones(ours: str, official: str) -> None:
    assert ours == official


@pytest.mark.parametrize(("name", "create"), METRICS)
def test_gen_ai_metrics_have_the_official_name_and_unit(name: str, create: Create) -> None:
    meter = Mock()
    create(meter)
    official = meter.create_histogram.call_args.kwargs
    kept = create_instruments(NoOpMeterProvider().get_meter("t"), histograms=True).histograms
    (ours,) = [h for h in kept if h.name == name]
    assert isinstance(ours, LocalHistogram)
    assert (ours.name, ours.unit) == (official["name"], official["unit"])


def test_tollgate_own_names_stay_in_its_namespace() -> None:
    ours = {v for k, v in vars(sc).items() if k.startswith("TOLLGATE_") and isinstance(v, str)}
    assert sc.TOLLGATE_REQUEST_STREAM in ours
    assert all(name.startswith("tollgate.") for name in ours)
    assert sc.METRIC_AUTH_FAILURES.startswith("tollgate.")
