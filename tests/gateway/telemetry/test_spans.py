"""The span tree and GenAI attributes of requests, as an operator sees them in a trace."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from adapters.base import Capabilities, Unavailable
from gateway.telemetry import semconv as sc
from gateway.tenancy.models import Limits
from tests.gateway.doubles import Script, ScriptedBackend
from tests.gateway.telemetry.conftest import Factory

PROMPT = "TOP-SECRET-PROMPT-TEXT"


def by_name(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def only(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> set[str]:
    assert parent.context is not None
    return {s.name for s in spans if s.parent and s.parent.span_id == parent.context.span_id}


def text_of(spans: Sequence[ReadableSpan]) -> str:
    """Every attribute and event value of every span, as one string."""
    parts = []
    for s in spans:
        parts.append(orjson.dumps(dict(s.attributes or {}), default=str).decode())
        for event in s.events:
            parts.append(orjson.dumps(dict(event.attributes or {}), default=str).decode())
    return " ".join(parts)


def test_non_streamed_completion_span_tree_and_attributes(traced: Factory) -> None:
    gw = traced()
    answer = gw.post(
        "/v1/completions",
        {"model": "test-model", "prompt": PROMPT, "max_tokens": 3, "temperature": 0.5},
    )
    assert answer.status_code == 200
    spans = gw.finished(1)

    server = only(spans, "POST /v1/completions")
    assert server.kind is SpanKind.SERVER
    assert server.parent is None
    assert children(spans, server) == {
        sc.SPAN_ADMISSION,
        sc.SPAN_ROUTING,
        "text_completion upstream-test-model",
    }
    attrs = server.attributes or {}
    assert attrs[sc.HTTP_RESPONSE_STATUS_CODE] == 200
    assert attrs[sc.HTTP_ROUTE] == "/v1/completions"
    assert attrs[sc.GEN_AI_OPERATION_NAME] == "text_completion"
    assert attrs[sc.GEN_AI_REQUEST_MODEL] == "test-model"
    assert attrs[sc.TOLLGATE_REQUEST_STREAM] is False
    assert attrs[sc.GEN_AI_REQUEST_MAX_TOKENS] == 3
    assert attrs[sc.TOLLGATE_TENANT] == "team-a"
    assert attrs[sc.TOLLGATE_POLICY] == "cost"
    assert attrs[sc.TOLLGATE_BACKEND] == "scripted"
    assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == 7
    assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    assert attrs[sc.TOLLGATE_FALLBACKS] == 0
    billed = float(answer.headers["x-tollgate-cost-usd"])
    assert attrs[sc.TOLLGATE_COST_USD] == pytest.approx(billed)

    client = only(spans, "text_completion upstream-test-model")
    assert client.kind is SpanKind.CLIENT
    c = client.attributes or {}
    assert c[sc.GEN_AI_PROVIDER_NAME] == "vllm"
    assert c[sc.GEN_AI_REQUEST_MODEL] == "upstream-test-model"
    assert c[sc.GEN_AI_RESPONSE_MODEL] == "upstream-test-model"
    assert c[sc.GEN_AI_REQUEST_TEMPERATURE] == 0.5
    assert c[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("length",)
    assert c[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    assert c[sc.TOLLGATE_BACKEND] == "scripted"
    assert c[sc.TOLLGATE_TTFT_S] >= 0  # type: ignore[operator]
    assert (c[sc.SERVER_ADDRESS], c[sc.SERVER_PORT]) == ("127.0.0.1", 9)  # its configured url
    assert client.status.status_code is StatusCode.UNSET
    unset = {
        sc.GEN_AI_REQUEST_TOP_K,
        sc.GEN_AI_REQUEST_PRESENCE_PENALTY,
        sc.GEN_AI_REQUEST_FREQUENCY_PENALTY,
        sc.GEN_AI_REQUEST_STOP_SEQUENCES,
    }
    assert not unset & (set(attrs) | set(c))  # what the client did not send is not recorded
    assert not {"gen_ai.request.stream", sc.TOLLGATE_REQUEST_STREAM} & set(c)

    routing = only(spans, sc.SPAN_ROUTING)
    assert (routing.attributes or {})[sc.TOLLGATE_CANDIDATES] == ("scripted",)
    estimate = routing.events[0].attributes or {}
    assert estimate[sc.TOLLGATE_BACKEND] == "scripted"
    assert estimate[sc.TOLLGATE_EST_USD_PER_MTOK] > 0  # type: ignore[operator]
    assert PROMPT not in text_of(spans)  # prompt text only when an operator opts in


def test_streamed_chat_span_tree_and_attributes(traced: Factory) -> None:
    gw = traced()
    with_usage = {"include_usage": True}
    answer = gw.post(
        "/v1/chat/completions",
        {
            "model": "test-model",
            "stream": True,
            "stream_options": with_usage,
            "messages": [{"role": "user", "content": PROMPT}],
        },
    )
    assert answer.status_code == 200
    assert "[DONE]" in answer.text
    spans = gw.finished(1)

    server = only(spans, "POST /v1/chat/completions")
    attrs = server.attributes or {}
    assert attrs[sc.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[sc.TOLLGATE_REQUEST_STREAM] is True
    assert "gen_ai.request.stream" not in attrs  # not a semconv 1.37 attribute
    assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 4
    assert attrs[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    client = only(spans, "chat upstream-test-model")
    assert client.parent is not None and server.context is not None
    assert client.parent.span_id == server.context.span_id
    assert (client.attributes or {})[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 4
    assert client.end_time is not None and server.end_time is not None
    assert client.end_time <= server.end_time  # the attempt spans the whole stream
    assert PROMPT not in text_of(spans)


def test_a_chat_rendered_into_a_prompt_is_still_a_chat_with_its_sampling_parameters(
    traced: Factory,
) -> None:
    prompts_only = Capabilities(stop=True, penalties=True)  # no chat endpoint: a template
    backend = ScriptedBackend(capabilities=prompts_only)
    gw = traced([backend])
    answer = gw.post(
        "/v1/chat/completions",
        {
            "model": "test-model",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "stop": ["END"],
            "presence_penalty": 0.5,
            "frequency_penalty": -0.25,
            "top_k": 40,
        },
    )
    assert answer.status_code == 200
    (sent,) = backend.requests
    assert sent.messages is None and sent.prompt  # the gateway rendered the template
    spans = gw.finished(1)

    server = only(spans, "POST /v1/chat/completions").attributes or {}
    client = only(spans, "chat upstream-test-model").attributes or {}
    assert client[sc.GEN_AI_OPERATION_NAME] == server[sc.GEN_AI_OPERATION_NAME] == "chat"
    for attrs in (server, client):
        assert attrs[sc.GEN_AI_REQUEST_PRESENCE_PENALTY] == 0.5
        assert attrs[sc.GEN_AI_REQUEST_FREQUENCY_PENALTY] == -0.25
        assert attrs[sc.GEN_AI_REQUEST_TOP_K] == 40.0
    assert server[sc.GEN_AI_REQUEST_STOP_SEQUENCES] == ("END",)  # what the client asked
    stops = client[sc.GEN_AI_REQUEST_STOP_SEQUENCES]  # what the backend was sent
    assert isinstance(stops, tuple) and stops[0] == "END" and tuple(sent.stop) == stops


def test_an_embedded_backend_has_no_server_address(traced: Factory) -> None:
    gw = traced(embedded=True)
    answer = gw.post("/v1/completions", {"model": "test-model", "prompt": "hi", "max_tokens": 2})
    assert answer.status_code == 200
    client = only(gw.finished(1), "text_completion upstream-test-model").attributes or {}
    assert client[sc.TOLLGATE_BACKEND] == "scripted"
    assert sc.SERVER_ADDRESS not in client and sc.SERVER_PORT not in client


def test_fallback_records_the_failed_attempt_and_the_one_that_served(traced: Factory) -> None:
    cheap = ScriptedBackend("cheap", script=lambda _: Script(error_before=Unavailable("down")))
    dear = ScriptedBackend("dear")
    gw = traced([cheap, dear])
    answer = gw.post("/v1/completions", {"model": "test-model", "prompt": "hi", "max_tokens": 2})
    assert answer.status_code == 200
    spans = gw.finished(1)

    attempts = sorted(
        by_name(spans, "text_completion upstream-test-model"),
        key=lambda s: (s.attributes or {})[sc.TOLLGATE_ATTEMPT],
    )
    assert [(s.attributes or {})[sc.TOLLGATE_BACKEND] for s in attempts] == ["cheap", "dear"]
    failed, served = attempts
    assert (failed.attributes or {})[sc.ERROR_TYPE] == "backend_unavailable"
    assert failed.status.status_code is StatusCode.ERROR
    assert sc.ERROR_TYPE not in (served.attributes or {})
    routing = only(spans, sc.SPAN_ROUTING)
    assert (routing.attributes or {})[sc.TOLLGATE_CANDIDATES] == ("cheap", "dear")
    server = only(spans, "POST /v1/completions")
    assert (server.attributes or {})[sc.TOLLGATE_FALLBACKS] == 1
    assert (server.attributes or {})[sc.TOLLGATE_BACKEND] == "dear"


def test_rejection_at_admission_is_on_the_admission_span(traced: Factory) -> None:
    gw = traced()
    key = gw.key_for("team-small", Limits(requests_per_minute=1))
    body = {"model": "test-model", "prompt": "hi", "max_tokens": 2}
    assert gw.post("/v1/completions", body, key=key).status_code == 200
    assert gw.post("/v1/completions", body, key=key).status_code == 429
    spans = gw.finished(2)

    rejected = [
        s for s in by_name(spans, sc.SPAN_ADMISSION) if s.status.status_code is StatusCode.ERROR
    ]
    assert len(rejected) == 1
    attrs = rejected[0].attributes or {}
    assert attrs[sc.ERROR_TYPE] == "rate_limit_exceeded"
    assert attrs[sc.TOLLGATE_TENANT] == "team-small"
    assert rejected[0].parent is not None
    server = next(s for s in spans if s.context and s.context.span_id == rejected[0].parent.span_id)
    assert (server.attributes or {})[sc.HTTP_RESPONSE_STATUS_CODE] == 429
    assert server.status.status_code is StatusCode.UNSET  # a 4xx is the client's, not ours
    assert not children(spans, server) - {sc.SPAN_ADMISSION}  # never routed


def test_incoming_traceparent_is_continued(traced: Factory) -> None:
    gw = traced()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    answer = gw.post(
        "/v1/completions",
        {"model": "test-model", "prompt": "hi", "max_tokens": 2},
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
    )
    assert answer.status_code == 200
    spans = gw.finished(1)
    server = only(spans, "POST /v1/completions")
    assert server.context is not None and server.parent is not None
    assert format(server.context.trace_id, "032x") == trace_id
    assert format(server.parent.span_id, "016x") == parent_id
    assert server.parent.is_remote
    assert {format(s.context.trace_id, "032x") for s in spans if s.context} == {trace_id}


def test_prompt_and_completion_text_only_when_the_operator_opts_in(traced: Factory) -> None:
    gw = traced(record_content=True)
    answer = gw.post("/v1/completions", {"model": "test-model", "prompt": PROMPT, "max_tokens": 4})
    assert answer.status_code == 200
    spans = gw.finished(1)
    client = only(spans, "text_completion upstream-test-model")
    attrs = client.attributes or {}
    sent = orjson.loads(str(attrs[sc.GEN_AI_INPUT_MESSAGES]))
    assert sent[0]["parts"][0]["content"] == PROMPT
    received = orjson.loads(str(attrs[sc.GEN_AI_OUTPUT_MESSAGES]))
    assert received[0]["parts"][0]["content"] == "Hello, world!"
    assert received[0]["finish_reason"] == "length"
