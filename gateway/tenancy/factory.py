"""``build_store``: the one place that picks Redis or in-process from config."""

from __future__ import annotations

from gateway.settings import MeteringSettings, StoreSettings, TenantSettings
from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.store import Store
from gateway.tenancy.tenants import limits_of


def build_store(
    settings: StoreSettings,
    tenants: TenantSettings,
    metering: MeteringSettings | None = None,
) -> Store:
    """A ``RedisStore`` when ``redis_url`` is set, else a ``MemoryStore`` (one replica)."""
    window_s = metering.window_s if metering else 60.0
    defaults = limits_of(tenants.defaults)
    if settings.redis_url:
        # Imported here so in-process deployments never load the Redis client.
        from gateway.tenancy.redis_store import RedisStore

        return RedisStore.from_settings(settings, defaults, metering_window_s=window_s)
    return MemoryStore(
        default_limits=defaults,
        limit_window_s=settings.limit_window_s,
        metering_window_s=window_s,
    )


async def seed_tenants(store: Store, tenants: TenantSettings) -> None:
    """Create the configured seed tenants that do not exist yet (limits of existing ones stay)."""
    for seed in tenants.seed:
        if await store.get_tenant(seed.id) is None:
            await store.create_tenant(seed.id, limits_of(seed))
