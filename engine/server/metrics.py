"""JetStream's Prometheus metrics for the engine, served as plain text on a port of their own.

Names, help texts and labels follow ``jetstream/core/metrics/prometheus.py`` (JetStream
acd4f5a): every series has ``id`` (the host, ``$HOSTNAME`` as JetStream reads it), per-engine
series add ``idx``. The load gauges are read from the batch loop at scrape time: the engine
prefills as it admits, so its one backlog is the prefill backlog, and the transfer and
generate backlogs stay 0; ``jetstream_slots_used_percentage`` is a fraction (0-1) and
``kv_cache_utilization_perc`` the same in percent, as JetStream computes them. JetStream has no
prefix cache; its series follow vLLM's (``prefix_cache_queries``/``hits``, in tokens) under the
``jetstream_`` prefix, with the hit rate as a gauge.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from engine.serving import Load

M = TypeVar("M", bound=MetricWrapperBase)
_ENGINE = "0"  # ``idx`` of the one generate engine
_LENGTHS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class _LoadCollector(Collector):
    """The backlog and slot gauges, from ``GenerationServer.load()`` when scraped."""

    def __init__(self, load: Callable[[], Load | None], host: str) -> None:
        self._load = load
        self._host = host

    def collect(self) -> Iterable[Metric]:
        load = self._load()
        if load is None:  # nothing to report until the engine is loaded
            return
        used = load.running / load.slots
        yield self._gauge("jetstream_prefill_backlog_size", "Size of prefill queue", load.waiting)
        yield self._gauge("jetstream_transfer_backlog_size", "Size of transfer queue", 0, True)
        yield self._gauge("jetstream_generate_backlog_size", "Size of generate queue", 0, True)
        yield self._gauge(
            "jetstream_slots_used_percentage",
            "The percentage of decode slots currently being used",
            used,
            True,
        )
        yield self._gauge(
            "num_requests_waiting",
            "Requests count waiting to be processed for inference.",
            load.waiting,
        )
        yield self._gauge(
            "kv_cache_utilization_perc",
            "kv-cache utilization by the requests under processing.",
            used * 100,
        )
        yield self._counter(
            "jetstream_prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            load.prompt_tokens,
        )
        yield self._counter(
            "jetstream_prefix_cache_hits",
            "Prompt tokens served from the prefix cache (KV reused, not computed).",
            load.cached_tokens,
        )
        yield self._gauge(
            "jetstream_prefix_cache_hit_rate",
            "Prompt tokens served from the prefix cache / prompt tokens, since start.",
            load.prefix_hit_rate,
            True,
        )

    def _counter(self, name: str, text: str, value: float) -> Metric:
        counter = CounterMetricFamily(name, text, labels=["id", "idx"])
        counter.add_metric([self._host, _ENGINE], float(value))
        return counter

    def _gauge(self, name: str, text: str, value: float, per_engine: bool = False) -> Metric:
        labels = ["id", "idx"] if per_engine else ["id"]
        gauge = GaugeMetricFamily(name, text, labels=labels)
        gauge.add_metric([self._host, _ENGINE] if per_engine else [self._host], float(value))
        return gauge


class ServerMetrics:
    """The server's registry: live load gauges, start-up times and per-request figures."""

    def __init__(self, load: Callable[[], Load | None], host: str | None = None) -> None:
        host = host or os.environ.get("HOSTNAME") or socket.gethostname()
        self.registry = CollectorRegistry()
        self.registry.register(_LoadCollector(load, host))
        series = partial(_series, registry=self.registry, host=host)
        self.model_load_time = series(
            Gauge, "jetstream_model_load_time", "Total time taken to load the model"
        )
        self.server_startup_latency = series(
            Gauge,
            "jetstream_server_startup_latency",
            "Total time taken to start the Jetstream server",
        )
        self.request_success_count = series(
            Counter, "jetstream_request_success_count", "Number of requests successfully completed"
        )
        self.request_input_length = series(
            Histogram,
            "jetstream_request_input_length",
            "Number of input tokens per request",
            buckets=_LENGTHS,
        )
        self.request_output_length = series(
            Histogram,
            "jetstream_request_output_length",
            "Number of output tokens per request",
            buckets=_LENGTHS,
        )
        self.time_to_first_token = series(
            Histogram,
            "jetstream_time_to_first_token",
            "Time to first token per request in seconds",
            buckets=_TTFT,
        )

    def completed(self, prompt_tokens: int, output_tokens: int) -> None:
        """Count a request that ran to its end."""
        self.request_success_count.inc()
        self.request_input_length.observe(prompt_tokens)
        self.request_output_length.observe(output_tokens)


def _series(
    kind: type[M],
    name: str,
    text: str,
    *,
    registry: CollectorRegistry,
    host: str,
    **options: Any,
) -> M:
    """One metric in ``registry``, with JetStream's ``id`` label set to ``host``."""
    return kind(name, text, ["id"], registry=registry, **options).labels(id=host)


class _Quiet(WSGIRequestHandler):
    """No line on stderr per scrape or probe."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsExporter:
    """``/metrics`` over plain HTTP in a daemon thread, and ``/healthz`` for a Kubernetes
    readiness probe: 200 once the model is loaded and serving, 503 before and while draining
    (JetStream's ``HealthCheck`` in HTTP terms; the kubelet's gRPC probe speaks only
    ``grpc.health.v1``)."""

    def __init__(
        self, metrics: ServerMetrics, host: str, port: int, live: Callable[[], bool] = lambda: True
    ) -> None:
        scrape = make_wsgi_app(metrics.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                ok = live()
                start_response("200 OK" if ok else "503 Service Unavailable",
                               [("Content-Type", "text/plain; charset=utf-8")])  # fmt: skip
                return [b"live\n" if ok else b"not live\n"]
            return scrape(environ, start_response)  # type: ignore[no-any-return]

        self._http: WSGIServer = make_server(host, port, app, ThreadingWSGIServer, _Quiet)
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="tollgate-engine-metrics", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the free one picked for 0)."""
        return int(self._http.server_port)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)
