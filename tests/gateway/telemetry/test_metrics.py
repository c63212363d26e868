"""What the gateway's metrics say after a little traffic, read through an in-memory reader."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import httpx
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    MetricsData,
    NumberDataPoint,
)

from adapters.base import Unavailable
from gateway.telemetry import semconv as sc
from gateway.tenancy.models import Limits
from tests.gateway.doubles import Script, ScriptedBackend
from tests.gateway.telemetry.conftest import Factory

Point = HistogramDataPoint | NumberDataPoint


def points(data: MetricsData, name: str) -> Iterator[Point]:
    for rm in data.resource_metrics:
        for scope in rm.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    yield from metric.data.data_points  # type: ignore[misc]


def where(data: MetricsData, name: str, **labels: object) -> list[Point]:
    def matches(attrs: Mapping[str, object]) -> bool:
        return all(attrs.get(k.replace("__", ".")) == v for k, v in labels.items())

    return [p for p in points(data, name) if matches(p.attributes or {})]


def test_request_metrics_after_a_streamed_and_a_plain_request(traced: Factory) -> None:
    gw = traced()
    body = {"model": "test-model", "prompt": "hi", "max_tokens": 4}
    assert gw.post("/v1/completions", body).status_code == 200
    assert gw.post("/v1/completions", {**body, "stream": True}).status_code == 200
    gw.finished(2)
    data = gw.collect()

    (duration,) = where(data, sc.METRIC_REQUEST_DURATION, tollgate__backend="scripted")
    assert isinstance(duration, HistogramDataPoint) and duration.count == 2
    assert list(duration.explicit_bounds) == list(sc.DURATION_BUCKETS)
    attrs = duration.attributes or {}
    assert attrs[sc.GEN_AI_PROVIDER_NAME] == "vllm"
    assert attrs[sc.GEN_AI_OPERATION_NAME] == "text_completion"
    (ttft,) = where(data, sc.METRIC_TTFT)
    assert isinstance(ttft, HistogramDataPoint) and ttft.count == 2
    assert list(ttft.explicit_bounds) == list(sc.TTFT_BUCKETS)
    (tpot,) = where(data, sc.METRIC_TPOT)
    assert isinstance(tpot, HistogramDataPoint) and tpot.count == 2
    assert list(tpot.explicit_bounds) == list(sc.TPOT_BUCKETS)

    (out,) = where(
        data, sc.METRIC_TOKEN_USAGE, gen_ai__token__type="output", tollgate__tenant="team-a"
    )
    (inp,) = where(data, sc.METRIC_TOKEN_USAGE, gen_ai__token__type="input")
    assert isinstance(out, HistogramDataPoint) and out.sum == 8
    assert isinstance(inp, HistogramDataPoint) and inp.sum == 14
    (cost,) = where(data, sc.METRIC_COST, tollgate__tenant="team-a", tollgate__backend="scripted")
    assert isinstance(cost, NumberDataPoint)
    assert abs(cost.value - (14 + 8) * 1e-6) < 1e-12  # PerTokenMeter: $1 per 1M tokens
    (tpd,) = where(data, sc.METRIC_TOKENS_PER_DOLLAR, tollgate__tenant="team-a")
    assert abs(tpd.value - 8 / cost.value) < 1e-3  # type: ignore[union-attr]
    (decisions,) = where(data, sc.METRIC_ROUTING_DECISIONS, tollgate__policy="cost")
    assert decisions.value == 2  # type: ignore[union-attr]
    (ok,) = where(data, sc.METRIC_REQUESTS, http__response__status_code=200)
    assert ok.value == 2  # type: ignore[union-attr]
    (in_flight,) = where(data, sc.METRIC_IN_FLIGHT)
    assert in_flight.value == 0  # type: ignore[union-attr]


def test_client_operation_duration_once_per_backend_attempt(traced: Factory) -> None:
    cheap = ScriptedBackend("cheap", script=lambda _: Script(error_before=Unavailable("down")))
    gw = traced([cheap, ScriptedBackend("dear")])
    chat = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
    assert gw.post("/v1/chat/completions", {**chat, "max_tokens": 2}).status_code == 200
    gw.finished(1)
    data = gw.collect()

    failed, served = (
        where(data, sc.METRIC_CLIENT_DURATION, tollgate__backend=name) for name in ("cheap", "dear")
    )
    assert len(failed) == len(served) == 1
    common = {
        sc.GEN_AI_OPERATION_NAME: "chat",
        sc.GEN_AI_PROVIDER_NAME: "vllm",
        sc.GEN_AI_REQUEST_MODEL: "upstream-test-model",  # the model the backend was asked for
        sc.SERVER_ADDRESS: "127.0.0.1",
        sc.SERVER_PORT: 9,
    }
    assert failed[0].attributes == {
        **common, sc.TOLLGATE_BACKEND: "cheap", sc.ERROR_TYPE: "backend_unavailable"
    }
    assert served[0].attributes == {**common, sc.TOLLGATE_BACKEND: "dear"}
    for point in (*failed, *served):
        assert isinstance(point, HistogramDataPoint) and point.count == 1
        assert list(point.explicit_bounds) == list(sc.DURATION_BUCKETS)
    (request,) = where(data, sc.METRIC_REQUEST_DURATION)
    assert isinstance(request, HistogramDataPoint) and served[0].sum <= request.sum


def test_failed_authentication_is_counted_by_error_never_by_key(traced: Factory) -> None:
    gw = traced()
    body = {"model": "test-model", "prompt": "hi", "max_tokens": 2}
    wrong = "tg-not-a-real-key-0123456789"
    assert gw.post("/v1/completions", body, key=wrong).status_code == 401
    bare = httpx.post(f"{gw.url}/v1/completions", json=body, timeout=10)
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
    assert gw.post("/v1/completions", body).status_code == 200
    gw.finished(3)
    data = gw.collect()

    (failures,) = where(data, sc.METRIC_AUTH_FAILURES)
    assert failures.attributes == {sc.ERROR_TYPE: "invalid_api_key"}
    assert failures.value == 2  # type: ignore[union-attr]
    assert wrong not in str(data.to_json())


def test_histogram_exemplars_link_to_the_trace_of_a_request(traced: Factory) -> None:
    gw = traced()
    body = {"model": "test-model", "prompt": "hi", "max_tokens": 4}
    assert gw.post("/v1/completions", body).status_code == 200
    spans = gw.finished(1)
    data = gw.collect()

    (server,) = [s for s in spans if s.kind.name == "SERVER"]
    (client,) = [s for s in spans if s.kind.name == "CLIENT"]
    assert server.context is not None and client.context is not None
    (duration,) = where(data, sc.METRIC_REQUEST_DURATION)
    assert isinstance(duration, HistogramDataPoint)
    (exemplar,) = duration.exemplars
    assert exemplar.trace_id == server.context.trace_id
    assert exemplar.span_id == server.context.span_id  # the SERVER span: the whole request
    assert exemplar.value == duration.sum and exemplar.time_unix_nano > 0
    for name in (sc.METRIC_CLIENT_DURATION, sc.METRIC_TTFT, sc.METRIC_TPOT):
        (point,) = where(data, name)
        assert isinstance(point, HistogramDataPoint)
        (exemplar,) = point.exemplars
        assert exemplar.trace_id == client.context.trace_id
        assert exemplar.span_id == client.context.span_id  # the attempt that served


def test_no_exemplars_from_traces_that_are_not_sampled(traced: Factory) -> None:
    gw = traced(sampled=False)
    body = {"model": "test-model", "prompt": "hi", "max_tokens": 4}
    assert gw.post("/v1/completions", body).status_code == 200
    data = gw.collect()
    for name in (sc.METRIC_REQUEST_DURATION, sc.METRIC_CLIENT_DURATION, sc.METRIC_TTFT):
        (point,) = where(data, name)
        assert isinstance(point, HistogramDataPoint)
        assert point.count == 1 and not point.exemplars


def test_fleet_gauges_fallbacks_and_rejections(traced: Factory) -> None:
    cheap = ScriptedBackend("cheap", script=lambda _: Script(error_before=Unavailable("down")))
    gw = traced([cheap, ScriptedBackend("dear")])
    body = {"model": "test-model", "prompt": "hi", "max_tokens": 2}
    assert gw.post("/v1/completions", body).status_code == 200
    key = gw.key_for("team-broke", Limits(monthly_budget_usd=0.0))
    refused = gw.post("/v1/completions", body, key=key)
    assert refused.status_code == 429
    gw.finished(2)
    data = gw.collect()

    (fallback,) = where(data, sc.METRIC_FALLBACKS)
    assert (fallback.attributes or {}) == {
        sc.TOLLGATE_POLICY: "cost",
        sc.TOLLGATE_BACKEND: "cheap",
        sc.ERROR_TYPE: "backend_unavailable",
    }
    (rejection,) = where(data, sc.METRIC_REJECTIONS)
    assert (rejection.attributes or {}) == {
        sc.TOLLGATE_TENANT: "team-broke",
        sc.ERROR_TYPE: refused.json()["error"]["code"],
    }
    open_state = where(
        data, sc.METRIC_BACKEND_BREAKER, tollgate__backend="dear", tollgate__breaker__state="closed"
    )
    assert [p.value for p in open_state] == [1]  # type: ignore[union-attr]
    healthy = {
        (p.attributes or {})[sc.TOLLGATE_BACKEND]: p.value  # type: ignore[union-attr]
        for p in where(data, sc.METRIC_BACKEND_HEALTHY)
    }
    assert healthy == {"cheap": 1, "dear": 1}


def test_no_providers_means_no_spans_and_no_metrics_endpoint(traced: Factory) -> None:
    from gateway.app import create_app
    from gateway.settings import TelemetrySettings
    from gateway.telemetry import build_telemetry
    from tests.gateway.doubles import PerTokenMeter
    from tests.gateway.telemetry.conftest import settings_for
    from tests.live import LiveServer

    telemetry = build_telemetry(TelemetrySettings(prometheus=False), env={})
    assert not telemetry.tracing and telemetry.registry is None
    app = create_app(
        settings_for(["scripted"]),
        backends=[ScriptedBackend()],
        meter=PerTokenMeter(),
        telemetry=telemetry,
    )
    with LiveServer(app) as server:
        assert httpx.get(f"{server.url}/metrics").status_code == 404


def test_prometheus_renders_the_new_metrics() -> None:
    import asyncio

    from opentelemetry.sdk.trace import TracerProvider

    from gateway.app import create_app
    from gateway.telemetry import Telemetry, prometheus_reader
    from gateway.tenancy.memory import MemoryStore
    from tests.gateway.doubles import PerTokenMeter
    from tests.gateway.telemetry.conftest import settings_for
    from tests.live import LiveServer

    registry, reader = prometheus_reader()
    telemetry = Telemetry(TracerProvider(), [reader], registry=registry)
    store = MemoryStore()
    key = asyncio.run(store.create_key("team-a")).secret
    app = create_app(
        settings_for(["scripted"]),
        store=store,
        backends=[ScriptedBackend()],
        meter=PerTokenMeter(),
        telemetry=telemetry,
    )
    body = {"model": "test-model", "prompt": "hi", "max_tokens": 2}
    with LiveServer(app) as server:
        assert httpx.post(f"{server.url}/v1/completions", json=body).status_code == 401
        auth = {"authorization": f"Bearer {key}"}
        assert httpx.post(f"{server.url}/v1/completions", json=body, headers=auth).is_success
        text = httpx.get(f"{server.url}/metrics").text  # with exemplars kept (sampled traces)
    assert 'tollgate_auth_failures_total{error_type="invalid_api_key"' in text
    assert "# TYPE gen_ai_client_operation_duration_seconds histogram" in text
    assert "gen_ai_client_operation_duration_seconds_count{" in text


def test_the_pool_gauges_export_what_the_router_wants_and_sees(traced: Factory) -> None:
    gw = traced([ScriptedBackend("cheap"), ScriptedBackend("dear")])
    data = gw.collect()
    desired = {
        (p.attributes or {})[sc.TOLLGATE_BACKEND]: p.value  # type: ignore[union-attr]
        for p in where(data, sc.METRIC_POOL_DESIRED)
    }
    assert desired == {"cheap": 1, "dear": 1}  # one reserved instance each, by default
    ready = where(data, sc.METRIC_POOL_INSTANCES, tollgate__instance__state="ready")
    assert sorted(p.value for p in ready) == [1, 1]  # type: ignore[union-attr]
