"""Request and response bodies of the admin and usage endpoints (validated by pydantic)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.settings import Policy
from gateway.tenancy.models import ApiKey, KeyScope, Limits, MeteredLimits, Tenant, UsageRow


class MeteredLimitsBody(BaseModel):
    """The limits admission meters (a tenant's, or a key's own: ``PATCH /admin/keys/{id}``);
    an absent or null field means unlimited."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Bounds that Redis' integers and Lua's doubles hold exactly, far past any real limit.
    requests_per_minute: int | None = Field(None, ge=1, le=10**9)
    tokens_per_minute: int | None = Field(None, ge=1, le=10**12)
    max_concurrent: int | None = Field(None, ge=1, le=10**6)
    monthly_budget_usd: float | None = Field(None, ge=0, le=10**9)

    def to_metered(self, base: MeteredLimits | None = None) -> MeteredLimits:
        """The metered limits this body sets; with ``base``, only the fields it names change."""
        given = self.model_dump(exclude_unset=base is not None, include=_METERED_FIELDS)
        return MeteredLimits(**given) if base is None else replace(base, **given)


_METERED_FIELDS = set(MeteredLimitsBody.model_fields)


class LimitsBody(MeteredLimitsBody):
    """A tenant's limits; an absent or null field means unlimited."""

    allowed_models: list[str] | None = None
    policy: Policy | None = None

    def to_limits(self, base: Limits | None = None) -> Limits:
        """The limits this body sets; with ``base``, only the fields it names change."""
        given = self.model_dump(exclude_unset=base is not None, include=_LIMIT_FIELDS)
        if "allowed_models" in given and given["allowed_models"] is not None:
            given["allowed_models"] = tuple(given["allowed_models"])
        return Limits(**given) if base is None else replace(base, **given)


_LIMIT_FIELDS = set(LimitsBody.model_fields)


class TenantCreate(LimitsBody):
    """``POST /admin/tenants``."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")


class KeyCreate(MeteredLimitsBody):
    """``POST /admin/keys``: the key's scope, and limits of its own within its tenant's."""

    tenant: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    name: str | None = Field(None, min_length=1, max_length=128)
    expires_at: float | None = Field(None, gt=0, le=2**40)  # unix seconds
    expires_in_s: float | None = Field(None, gt=0, le=100 * 365 * 86400)
    allowed_models: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyCreate:
        if self.expires_at is not None and self.expires_in_s is not None:
            raise ValueError("give expires_at or expires_in_s, not both")
        if self.expires_at is not None and self.expires_at <= time.time():
            raise ValueError("expires_at is in the past")
        return self

    def scope(self) -> KeyScope:
        """What the new key may do within its tenant's limits."""
        expires = self.expires_at
        if self.expires_in_s is not None:
            expires = time.time() + self.expires_in_s
        models = tuple(self.allowed_models) if self.allowed_models is not None else None
        return KeyScope(self.name, expires, models, self.to_metered())


def tenant_json(tenant: Tenant) -> dict[str, Any]:
    """A tenant as the admin API shows it."""
    limits = tenant.limits
    return {
        "id": tenant.id,
        "object": "tenant",
        "created_at": tenant.created_at,
        "limits": {
            **metered_json(limits),
            "allowed_models": list(limits.allowed_models) if limits.allowed_models else None,
            "policy": limits.policy,
        },
    }


def metered_json(limits: MeteredLimits) -> dict[str, Any]:
    """The limits admission meters, as the admin API shows them (null: unlimited)."""
    return {
        "requests_per_minute": limits.requests_per_minute,
        "tokens_per_minute": limits.tokens_per_minute,
        "max_concurrent": limits.max_concurrent,
        "monthly_budget_usd": limits.monthly_budget_usd,
    }


def key_json(key: ApiKey) -> dict[str, Any]:
    """A key's public record (never its secret)."""
    return {
        "id": key.id,
        "object": "api_key",
        "tenant": key.tenant,
        "prefix": key.prefix,
        "name": key.scope.name,
        "created_at": key.created_at,
        "expires_at": key.scope.expires_at,
        "allowed_models": list(key.scope.allowed_models) if key.scope.allowed_models else None,
        "limits": metered_json(key.scope.limits),
        "revoked": key.revoked,
    }


def row_json(row: UsageRow, key_names: dict[str, str | None] | None = None) -> dict[str, Any]:
    """One usage row with its tokens per dollar; grouped by key, the key's name beside its id."""
    group: dict[str, Any] = {}
    for name, value in row.group.items():
        group[name] = value
        if name == "key" and key_names is not None:
            group["key_name"] = key_names.get(value)
    return {
        **group,
        "requests": row.requests,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": row.prompt_tokens + row.completion_tokens,
        "cost_usd": round(row.cost_usd, 9),
        "tokens_per_dollar": row.tokens_per_dollar,
    }
