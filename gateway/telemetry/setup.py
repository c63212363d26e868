"""Build an app's ``Telemetry`` from settings and the standard ``OTEL_*`` environment variables.

Tracing and OTLP metrics are on only when an OTLP endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or its ``_TRACES_``/``_METRICS_`` variants), over
``OTEL_EXPORTER_OTLP_PROTOCOL`` = ``http/protobuf`` (the specification's default) or ``grpc``.
``OTEL_SDK_DISABLED=true`` and ``OTEL_{TRACES,METRICS}_EXPORTER=none`` turn signals off.
The exporters, sampler and batch processor read their other ``OTEL_*`` variables themselves.
The Prometheus reader (``telemetry.prometheus``) feeds a registry of this app's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from prometheus_client import CollectorRegistry

from gateway.settings import TelemetrySettings
from gateway.telemetry.recorder import VERSION, Telemetry

PROTOCOLS = ("http/protobuf", "grpc")


def build_telemetry(settings: TelemetrySettings, env: Mapping[str, str] | None = None) -> Telemetry:
    """Providers for what is configured; a no-op ``Telemetry`` when nothing is."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Telemetry(record_content=settings.record_content)
    resource = _resource(settings, env)
    stops: list[Callable[[], object]] = []
    tracer_provider = None
    if _otlp_wanted(env, "TRACES"):
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(env)))
        stops.append(tracer_provider.shutdown)
    readers: list[MetricReader] = []
    if _otlp_wanted(env, "METRICS"):
        readers.append(PeriodicExportingMetricReader(_metric_exporter(env)))
    registry = None
    if settings.prometheus:
        registry, reader = prometheus_reader()
        readers.append(reader)
    return Telemetry(
        tracer_provider,
        readers,
        resource=resource,
        record_content=settings.record_content,
        registry=registry,
        on_shutdown=stops,
    )


def prometheus_reader() -> tuple[CollectorRegistry, MetricReader]:
    """A Prometheus reader feeding a fresh registry (never the process-global one)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    registry = CollectorRegistry(auto_describe=True)
    return registry, PrometheusMetricReader(registry=registry)


def protocol(env: Mapping[str, str], signal: str) -> str:
    """The OTLP protocol for ``signal`` (``TRACES`` or ``METRICS``)."""
    chosen = (
        env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if chosen not in PROTOCOLS:
        raise ValueError(f"OTLP protocol {chosen!r} is not supported; use one of {PROTOCOLS}")
    return chosen


def _otlp_wanted(env: Mapping[str, str], signal: str) -> bool:
    exporters = env.get(f"OTEL_{signal}_EXPORTER", "otlp").replace(" ", "").split(",")
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
        f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"
    )
    return bool(endpoint) and "otlp" in exporters


def _resource(settings: TelemetrySettings, env: Mapping[str, str]) -> Resource:
    attributes: dict[str, str] = {SERVICE_VERSION: VERSION}
    if not env.get("OTEL_SERVICE_NAME"):  # the standard variable wins over the config file
        attributes[SERVICE_NAME] = settings.service_name
    return Resource.create(attributes)


def _span_exporter(env: Mapping[str, str]) -> SpanExporter:
    if protocol(env, "TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter()


def _metric_exporter(env: Mapping[str, str]) -> MetricExporter:
    if protocol(env, "METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter()
