"""``build_meter``: the app's meter from config and the store it books windows in."""

from __future__ import annotations

from gateway.metering.meter import Meter
from gateway.metering.service import CostMeter, InstanceCount
from gateway.settings import Settings
from gateway.tenancy.store import Store


def build_meter(
    settings: Settings, store: Store, *, instances: InstanceCount | None = None
) -> Meter:
    """A ``CostMeter`` over every configured backend's price, counting billed ``instances``."""
    return CostMeter(settings.metering, settings.backends, store, instances=instances)
