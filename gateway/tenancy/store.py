"""The Store protocol: keys, tenants, admission, settlement and usage, behind one interface.

Two implementations: ``RedisStore`` (any number of replicas) and ``MemoryStore`` (one
process). Both pass the same contract suite in ``tests/gateway/tenancy``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.tenancy.ledger import WindowLedger
from gateway.tenancy.models import (
    Admission,
    ApiKey,
    IssuedKey,
    KeyScope,
    Limits,
    MeteredLimits,
    Principal,
    Tenant,
    UsageRecord,
    UsageRow,
)


class Store(Protocol):
    """Tenancy state. Admission and settlement are one round trip each on Redis."""

    async def create_tenant(self, tenant_id: str, limits: Limits | None = None) -> Tenant: ...
    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...
    async def list_tenants(self) -> Sequence[Tenant]: ...
    async def update_limits(self, tenant_id: str, limits: Limits) -> Tenant: ...
    async def delete_tenant(self, tenant_id: str) -> bool: ...

    async def create_key(self, tenant_id: str, scope: KeyScope | None = None) -> IssuedKey:
        """Issue a key, creating the tenant with default limits if it does not exist.

        ``scope`` narrows what the key may do (name, expiry, models, limits of its own) within
        the tenant's limits.
        """
        ...

    async def list_keys(self, tenant_id: str | None = None) -> Sequence[ApiKey]: ...
    async def get_key(self, key_id: str) -> ApiKey | None: ...

    async def update_key_limits(self, key_id: str, limits: MeteredLimits) -> ApiKey:
        """Replace an active key's own limits; raises ``UnknownKey`` (revoked or expired too).

        A key's own counters run only while it has limits: its budget counts what it spent
        from the time it got them (from creation, when it was created with them).
        """
        ...

    async def revoke_key(self, key_id: str) -> bool: ...

    async def authenticate(self, secret: str) -> Principal:
        """The caller behind a bearer secret; raises ``Unauthenticated`` (also once expired)."""
        ...

    async def admit(self, principal: Principal, *, tokens: int, cost_usd: float) -> Admission:
        """Check and reserve RPM, TPM, concurrency and budget in one atomic step, at the key's
        own limits (if it has any) and the tenant's: both levels or neither.

        Raises ``RateLimited`` (with a correct retry-after) or ``QuotaExceeded``, naming the key
        when its own limit refused.
        """
        ...

    async def settle(self, admission: Admission, usage: UsageRecord) -> None:
        """Replace the reservation by actuals and write the ledger record, exactly once.

        Whatever checkpoints of the request booked is replaced, never added to.
        """
        ...

    def track(self, admission: Admission, progress: Callable[[], UsageRecord | None]) -> None:
        """Checkpoint ``progress()`` of a live request periodically until it settles, so a
        replica that dies loses at most one heartbeat of its usage (no-op in one process)."""
        ...

    async def start(self) -> None:
        """Begin background upkeep: lease heartbeats and announcing this replica."""
        ...

    @property
    def degraded(self) -> bool:
        """Whether limits are enforced per replica on local shares (the store is away)."""
        ...

    async def usage(
        self,
        *,
        tenant: str | None,
        start: float,
        end: float,
        group_by: Sequence[str],
    ) -> Sequence[UsageRow]:
        """Aggregates over [start, end) grouped by any of tenant, key, backend, model, hour, day."""
        ...

    async def record(self, tenant: str, request_id: str) -> UsageRecord | None:
        """The ledger's one record of a request (by the server-generated id), if settled."""
        ...

    @property
    def windows(self) -> WindowLedger:
        """Per-backend window totals and shares, for metering's flush and reconciliation."""
        ...

    async def reachable(self) -> bool:
        """Whether the state behind the store answers now (for readiness, not the hot path)."""
        ...

    async def aclose(self) -> None: ...
