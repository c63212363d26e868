"""Admin endpoints (tenants, keys, usage; admin key only) and ``GET /v1/usage`` (own key)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query

from gateway.admin.schemas import (
    KeyCreate,
    LimitsBody,
    MeteredLimitsBody,
    TenantCreate,
    key_json,
    row_json,
    tenant_json,
)
from gateway.deps import AdminOnly, CurrentPrincipal, State
from gateway.errors import InvalidRequest
from gateway.metering.service import CostMeter
from gateway.tenancy.tenants import UnknownKey, UnknownTenant

admin_router = APIRouter(prefix="/admin", dependencies=[AdminOnly])
usage_router = APIRouter()


@admin_router.post("/tenants")
async def create_tenant(body: TenantCreate, state: State) -> dict[str, Any]:
    """Create a tenant with the given limits (unset ones are unlimited)."""
    if await state.store.get_tenant(body.id) is not None:
        raise InvalidRequest(f"Tenant {body.id!r} already exists.", param="id")
    tenant = await state.store.create_tenant(body.id, body.to_limits())
    return tenant_json(tenant)


@admin_router.get("/tenants")
async def list_tenants(state: State) -> dict[str, Any]:
    """Every tenant with its limits."""
    return {"object": "list", "data": [tenant_json(t) for t in await state.store.list_tenants()]}


@admin_router.get("/tenants/{tenant_id}")
async def show_tenant(tenant_id: str, state: State) -> dict[str, Any]:
    """One tenant."""
    tenant = await state.store.get_tenant(tenant_id)
    if tenant is None:
        raise UnknownTenant(tenant_id)
    return tenant_json(tenant)


@admin_router.patch("/tenants/{tenant_id}")
async def update_tenant(tenant_id: str, body: LimitsBody, state: State) -> dict[str, Any]:
    """Change the limits the body names; the others stay as they are."""
    tenant = await state.store.get_tenant(tenant_id)
    if tenant is None:
        raise UnknownTenant(tenant_id)
    updated = await state.store.update_limits(tenant_id, body.to_limits(tenant.limits))
    return tenant_json(updated)


@admin_router.delete("/tenants/{tenant_id}")
async def delete_tenant(tenant_id: str, state: State) -> dict[str, Any]:
    """Delete a tenant and revoke its keys (its usage stays)."""
    if not await state.store.delete_tenant(tenant_id):
        raise UnknownTenant(tenant_id)
    return {"id": tenant_id, "object": "tenant", "deleted": True}


@admin_router.post("/keys")
async def create_key(body: KeyCreate, state: State) -> dict[str, Any]:
    """Issue a key (the secret is in this answer only); creates an unknown tenant."""
    issued = await state.store.create_key(body.tenant, body.scope())
    return {**key_json(issued.record), "key": issued.secret}


@admin_router.get("/keys")
async def list_keys(state: State, tenant: str | None = None) -> dict[str, Any]:
    """Key records, optionally of one tenant; never secrets."""
    return {"object": "list", "data": [key_json(k) for k in await state.store.list_keys(tenant)]}


@admin_router.get("/keys/{key_id}")
async def show_key(key_id: str, state: State) -> dict[str, Any]:
    """One key's record (never its secret), revoked or not."""
    key = await state.store.get_key(key_id)
    if key is None:
        raise UnknownKey(key_id)
    return key_json(key)


@admin_router.patch("/keys/{key_id}")
async def update_key(key_id: str, body: MeteredLimitsBody, state: State) -> dict[str, Any]:
    """Change the key's own limits the body names (null: unlimited); the others stay.

    Every replica applies them within the key cache's TTL (a second)."""
    key = await state.store.get_key(key_id)
    if key is None or key.revoked:
        raise UnknownKey(key_id)
    updated = await state.store.update_key_limits(key_id, body.to_metered(key.scope.limits))
    return key_json(updated)


@admin_router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, state: State) -> dict[str, Any]:
    """Revoke a key; every replica refuses it within a second (404 if none is active)."""
    if not await state.store.revoke_key(key_id):
        raise UnknownKey(key_id)
    return {"id": key_id, "object": "api_key", "revoked": True}


@admin_router.get("/usage")
async def admin_usage(
    state: State,
    tenant: str | None = None,
    start: str | None = Query(None, alias="from"),
    end: str | None = Query(None, alias="to"),
    group_by: str = "tenant,backend,model",
) -> dict[str, Any]:
    """Tokens, reconciled cost and tokens per dollar, grouped; plus each backend's realised cost."""
    answer = await _usage(state, tenant, start, end, group_by)
    if isinstance(state.meter, CostMeter):
        answer["backends"] = [
            {
                "backend": e.backend,
                "windows": e.windows,
                "output_tokens": e.output_tokens,
                "cost_usd": round(e.cost_usd, 9),
                "usd_per_mtok_output": e.usd_per_mtok_output,
                "tokens_per_dollar": e.tokens_per_dollar,
            }
            for e in await state.meter.efficiency()
        ]
    return answer


@usage_router.get("/v1/usage")
async def own_usage(
    state: State,
    principal: CurrentPrincipal,
    start: str | None = Query(None, alias="from"),
    end: str | None = Query(None, alias="to"),
    group_by: str = "backend,model",
) -> dict[str, Any]:
    """The calling tenant's own usage."""
    return await _usage(state, principal.tenant.id, start, end, group_by)


async def _usage(
    state: State, tenant: str | None, start: str | None, end: str | None, group_by: str
) -> dict[str, Any]:
    now = time.time()
    t_from = _instant(start, "from") if start else _month_start(now)
    t_to = _instant(end, "to") if end else now + 1
    fields = [f.strip() for f in group_by.split(",") if f.strip()]
    rows = await state.store.usage(tenant=tenant, start=t_from, end=t_to, group_by=fields)
    names = None
    if "key" in fields:
        names = {k.id: k.scope.name for k in await state.store.list_keys(tenant)}
    return {
        "object": "list",
        "tenant": tenant,
        "from": t_from,
        "to": t_to,
        "group_by": fields,
        "data": [row_json(r, names) for r in rows],
    }


MAX_INSTANT = 253_402_300_799.0  # 9999-12-31T23:59:59Z: what datetime can still represent


def _instant(value: str, param: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (UTC unless it says otherwise)."""
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or abs(seconds) > MAX_INSTANT:
            raise InvalidRequest(f"{param!r} must be a time between years 1 and 9999.",
                                 param=param)
        return seconds
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{param!r} must be unix seconds or ISO 8601.", param=param) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _month_start(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
