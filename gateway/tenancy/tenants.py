"""Tenant ids, default limits from config, and the error for a tenant that does not exist."""

from __future__ import annotations

from gateway.errors import InvalidRequest
from gateway.settings import TenantSeed
from gateway.tenancy.models import TENANT_ID, Limits


class UnknownTenant(InvalidRequest):
    """An admin call named a tenant that does not exist."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"No tenant {tenant_id!r}.", param="tenant")
        self.tenant_id = tenant_id


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
