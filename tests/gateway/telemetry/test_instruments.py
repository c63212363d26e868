"""Local histograms: the SDK's bucket rule, cumulative points and per-bucket exemplars, merged
into every export."""

from __future__ import annotations

import time

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, TraceFlags

from gateway.telemetry.instruments import LocalExport, LocalHistogram

SCOPE = InstrumentationScope("tollgate", "0.1.0", "https://opentelemetry.io/schemas/1.37.0")


def test_buckets_count_values_up_to_and_including_each_bound() -> None:
    hist = LocalHistogram("h", "s", "test", (1.0, 2.0), "k")
    for value in (0.5, 1.0, 1.5, 2.0, 7.0):
        hist.record(value, "a")
    hist.record(3.0, "")  # an absent attribute
    now = time.time_ns()
    metric = hist.metric(now)
    assert metric is not None
    first, second = metric.data.data_points
    assert isinstance(first, HistogramDataPoint) and isinstance(second, HistogramDataPoint)
    assert first.attributes == {"k": "a"} and second.attributes == {}
    assert list(first.bucket_counts) == [2, 2, 1]  # (-inf, 1], (1, 2], (2, +inf)
    assert (first.count, first.sum, first.min, first.max) == (5, 12.0, 0.5, 7.0)
    assert first.time_unix_nano == now and 0 < first.start_time_unix_nano <= now


def test_the_same_buckets_as_the_sdk_for_the_same_values() -> None:
    reader = InMemoryMetricReader()
    sdk = MeterProvider(metric_readers=[reader]).get_meter("sdk").create_histogram(
        "h", explicit_bucket_boundaries_advisory=[0.1, 1.0, 10.0]
    )
    local = LocalHistogram("h", "s", "test", (0.1, 1.0, 10.0))
    values = [0.0, 0.1, 0.10001, 0.99, 1.0, 5.0, 10.0, 11.0, 1e9]
    for value in values:
        sdk.record(value)
        local.record(value)
    data = reader.get_metrics_data()
    assert data is not None
    (expected,) = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    metric = local.metric(0)
    assert metric is not None
    (got,) = metric.data.data_points
    assert isinstance(expected, HistogramDataPoint) and isinstance(got, HistogramDataPoint)
    assert list(got.bucket_counts) == list(expected.bucket_counts)
    assert (got.count, got.sum, got.min, got.max) == (
        expected.count, expected.sum, expected.min, expected.max
    )


def test_readers_receive_local_histograms_beside_the_sdk_instruments() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    counter = provider.get_meter("tollgate", "0.1.0", SCOPE.schema_url).create_counter("c")
    counter.add(1)  # the app always has SDK metrics too (its observable gauges)
    hist = LocalHistogram("local.h", "s", "test", (1.0,), "k")
    LocalExport([hist], SCOPE).attach(reader)
    data = reader.get_metrics_data()
    assert data is not None
    names = [m.name for s in data.resource_metrics[0].scope_metrics for m in s.metrics]
    assert names == ["c"]  # nothing recorded locally yet: no empty histogram
    hist.record(0.5, "x")
    data = reader.get_metrics_data()
    assert data is not None
    (scoped,) = data.resource_metrics[0].scope_metrics  # one scope, not two
    assert scoped.scope.name == "tollgate"
    assert sorted(m.name for m in scoped.metrics) == ["c", "local.h"]


def sampled(trace_id: int, span_id: int) -> SpanContext:
    flags = TraceFlags(TraceFlags.SAMPLED)
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags)


def test_each_bucket_keeps_its_last_sampled_measurement_as_exemplar() -> None:
    hist = LocalHistogram("h", "s", "test", (1.0, 2.0), "k")
    hist.record(0.5, "a", trace=sampled(1, 11))
    hist.record(0.7, "a", trace=sampled(2, 22))  # the same bucket: the last one stays
    hist.record(0.9, "a")  # no sampled span: counted, but no exemplar
    hist.record(1.5, "a")
    hist.record(7.0, "a", trace=sampled(4, 44))
    metric = hist.metric(time.time_ns())
    assert metric is not None
    (point,) = metric.data.data_points
    assert isinstance(point, HistogramDataPoint)
    assert list(point.bucket_counts) == [3, 1, 1]
    kept = [(e.value, e.trace_id, e.span_id) for e in point.exemplars]
    assert kept == [(0.7, 2, 22), (7.0, 4, 44)]
    assert all(e.time_unix_nano > 0 and not e.filtered_attributes for e in point.exemplars)


def test_otlp_export_carries_the_exemplars() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("tollgate", "0.1.0", SCOPE.schema_url).create_counter("c").add(1)
    hist = LocalHistogram("local.h", "s", "test", (1.0,), "k")
    LocalExport([hist], SCOPE).attach(reader)
    hist.record(0.5, "x", trace=sampled(0xABC, 0xDEF))
    data = reader.get_metrics_data()
    assert data is not None
    request = encode_metrics(data)  # what the OTLP exporters send
    metrics = request.resource_metrics[0].scope_metrics[0].metrics
    (local,) = [m for m in metrics if m.name == "local.h"]
    (exemplar,) = local.histogram.data_points[0].exemplars
    assert exemplar.trace_id == (0xABC).to_bytes(16, "big")
    assert exemplar.span_id == (0xDEF).to_bytes(8, "big")
    assert exemplar.as_double == 0.5

