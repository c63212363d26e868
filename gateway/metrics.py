"""``GET /metrics``: the app's OpenTelemetry metrics in Prometheus (or OpenMetrics) text."""

from __future__ import annotations

from fastapi import Request
from prometheus_client.exposition import choose_encoder
from starlette.responses import Response

from gateway.deps import State


async def metrics(request: Request, state: State) -> Response:
    """Render this app's registry; the format follows the scraper's ``Accept`` header."""
    registry = state.telemetry.registry
    if registry is None:  # not mounted then; kept for an app whose telemetry was swapped
        return Response(status_code=404)
    # Rendering runs the observable callbacks, which read router state owned by this loop.
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), media_type=None, headers={"content-type": content_type})
