"""Tenant ids, default limits from config, and the 404s for a missing tenant or key."""

from __future__ import annotations

from gateway.errors import InvalidRequest, NotFound
from gateway.settings import TenantSeed
from gateway.tenancy.models import TENANT_ID, Limits


class UnknownTenant(NotFound):
    """An admin call named a tenant that does not exist (404)."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"No tenant {tenant_id!r}.", param="tenant")
        self.tenant_id = tenant_id


class UnknownKey(NotFound):
    """An admin call named a key that does not exist or is already revoked (404)."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"No active key {key_id!r}.", param="key_id")
        self.key_id = key_id


def checked_id(tenant_id: str) -> str:
    """``tenant_id`` if it is a valid tenant id; raises ``InvalidRequest``."""
    if not TENANT_ID.fullmatch(tenant_id):
        raise InvalidRequest("Tenant ids are [a-z0-9][a-z0-9-]{0,62}.", param="tenant")
    return tenant_id


def limits_of(seed: TenantSeed) -> Limits:
    """The limits a config seed (or the defaults block) describes."""
    return Limits(
        requests_per_minute=seed.requests_per_minute,
        tokens_per_minute=seed.tokens_per_minute,
        max_concurrent=seed.max_concurrent,
        monthly_budget_usd=seed.monthly_budget_usd,
        allowed_models=seed.allowed_models,
        policy=seed.policy,
    )
