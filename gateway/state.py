"""The parts one app owns, wired once in ``create_app`` and reached from routes via deps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.settings import Settings
from gateway.tenancy.store import Store

if TYPE_CHECKING:
    from gateway.metering.meter import Meter
    from gateway.openai.serving import Serving
    from gateway.routing.router import Router
    from gateway.telemetry import Telemetry


@dataclass(slots=True)
class AppState:
    """Everything a request may need; there is no global mutable state."""

    settings: Settings
    store: Store
    admin_key: str
    router: Router
    meter: Meter
    telemetry: Telemetry
    serving: Serving
    started_at: int = 0
    draining: bool = False
