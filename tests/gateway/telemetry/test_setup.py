"""Telemetry built from settings and OTEL_*: off by default, OTLP when an endpoint is set."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.app import create_app
from gateway.settings import TelemetrySettings
from gateway.telemetry import build_telemetry
from gateway.telemetry.setup import protocol
from gateway.tenancy.memory import MemoryStore
from tests.gateway.doubles import PerTokenMeter, ScriptedBackend
from tests.gateway.telemetry.conftest import settings_for
from tests.live import LiveServer


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP receiver on 127.0.0.1 that keeps what it is sent."""

    received: list[tuple[str, bytes]]


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.received.append((self.path, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector(("127.0.0.1", 0), _Handler)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_one_request(settings: TelemetrySettings, env: dict[str, str]) -> tuple[str, str]:
    """Serve one completion; return the /metrics text (or "") and its content type."""
    store = MemoryStore()
    key = asyncio.run(store.create_key("team-a")).secret
    app = create_app(
        settings_for(["scripted"]),
        store=store,
        backends=[ScriptedBackend()],
        meter=PerTokenMeter(),
        telemetry=build_telemetry(settings, env),
    )
    with LiveServer(app) as server:
        answer = httpx.post(
            f"{server.url}/v1/completions",
            json={"model": "test-model", "prompt": "hi", "max_tokens": 2},
            headers={"authorization": f"Bearer {key}"},
        )
        assert answer.status_code == 200
        scraped = httpx.get(
            f"{server.url}/metrics", headers={"accept": "application/openmetrics-text"}
        )
    if scraped.status_code != 200:
        return "", ""
    return scraped.text, scraped.headers["content-type"]


def test_default_is_prometheus_only_without_tracing() -> None:
    telemetry = build_telemetry(TelemetrySettings(), env={})
    assert not telemetry.tracing
    assert telemetry.registry is not None
    text, content_type = run_one_request(TelemetrySettings(), {})
    assert content_type.startswith("application/openmetrics-text")
    assert "gen_ai_server_request_duration_seconds_bucket{" in text
    assert "tollgate_cost_USD_total{" in text
    assert 'tollgate_tenant="team-a"' in text


def test_otlp_http_exports_spans_and_metrics(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "tollgate-test"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the exporters read their own variables
    run_one_request(TelemetrySettings(prometheus=False), env)  # shutdown flushes both

    traces = [b for path, b in collector.received if path == "/v1/traces"]
    metrics = [b for path, b in collector.received if path == "/v1/metrics"]
    assert traces and metrics
    names = set()
    for body in traces:
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            service = {a.key: a.value.string_value for a in rs.resource.attributes}
            assert service["service.name"] == "tollgate-test"
            names |= {s.name for ss in rs.scope_spans for s in ss.spans}
    assert {"POST /v1/completions", "text_completion upstream-test-model"} <= names
    exported = {
        m.name
        for body in metrics
        for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert {"gen_ai.server.request.duration", "tollgate.cost"} <= exported


def test_protocol_and_signal_switches() -> None:
    assert protocol({}, "TRACES") == "http/protobuf"
    assert protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "TRACES") == "grpc"
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
    }
    assert protocol(env, "METRICS") == "http/protobuf"
    with pytest.raises(ValueError, match="http/json"):
        protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "TRACES")
    off = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": "none"}
    assert not build_telemetry(TelemetrySettings(prometheus=False), off).tracing
    disabled = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"}
    assert not build_telemetry(TelemetrySettings(), disabled).tracing
    grpc = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRICS_EXPORTER": "none",
    }
    telemetry = build_telemetry(TelemetrySettings(prometheus=False), grpc)
    assert telemetry.tracing
    asyncio.run(telemetry.aclose())
