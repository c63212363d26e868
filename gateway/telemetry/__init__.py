"""OpenTelemetry for Tollgate: traces and metrics with explicitly passed providers.

``semconv`` holds every name (GenAI conventions pinned at ``semconv.SEMCONV_VERSION``);
``recorder`` the ``Telemetry`` object the request path records into; ``setup`` builds one
from settings and ``OTEL_*``; ``server_span`` is the HTTP side. Nothing is installed globally.
"""

from gateway.telemetry.recorder import Telemetry, error_type
from gateway.telemetry.semconv import SEMCONV_VERSION
from gateway.telemetry.setup import build_telemetry, prometheus_reader

__all__ = ["SEMCONV_VERSION", "Telemetry", "build_telemetry", "error_type", "prometheus_reader"]
