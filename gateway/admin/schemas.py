"""Request and response bodies of the admin and usage endpoints (validated by pydantic)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.settings import Policy
from gateway.tenancy.models import ApiKey, Limits, Tenant, UsageRow


class LimitsBody(BaseModel):
    """A tenant's limits; an absent or null field means unlimited."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Bounds that Redis' integers and Lua's doubles hold exactly, far past any real limit.
    requests_per_minute: int | None = Field(None, ge=1, le=10**9)
    tokens_per_minute: int | None = Field(None, ge=1, le=10**12)
    max_concurrent: int | None = Field(None, ge=1, le=10**6)
    monthly_budget_usd: float | None = Field(None, ge=0, le=10**9)
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


class KeyCreate(BaseModel):
    """``POST /admin/keys``."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")


def tenant_json(tenant: Tenant) -> dict[str, Any]:
    """A tenant as the admin API shows it."""
    limits = tenant.limits
    return {
        "id": tenant.id,
        "object": "tenant",
        "created_at": tenant.created_at,
        "limits": {
            "requests_per_minute": limits.requests_per_minute,
            "tokens_per_minute": limits.tokens_per_minute,
            "max_concurrent": limits.max_concurrent,
            "monthly_budget_usd": limits.monthly_budget_usd,
            "allowed_models": list(limits.allowed_models) if limits.allowed_models else None,
            "policy": limits.policy,
        },
    }


def key_json(key: ApiKey) -> dict[str, Any]:
    """A key's public record (never its secret)."""
    return {
        "id": key.id,
        "object": "api_key",
        "tenant": key.tenant,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "revoked": key.revoked,
    }


def row_json(row: UsageRow) -> dict[str, Any]:
    """One usage row with its tokens per dollar."""
    return {
        **row.group,
        "requests": row.requests,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": row.prompt_tokens + row.completion_tokens,
        "cost_usd": round(row.cost_usd, 9),
        "tokens_per_dollar": row.tokens_per_dollar,
    }
