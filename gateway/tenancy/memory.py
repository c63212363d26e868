"""``MemoryStore``: the Store for one process (the ``make serve`` default, no Redis).

Every check-and-reserve runs without an ``await`` in between, so on one event loop it is
as atomic as the Redis scripts it mirrors.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from gateway.errors import Unauthenticated
from gateway.tenancy import keys
from gateway.tenancy.ledger import (
    IDLE,
    Cell,
    Counters,
    Share,
    WindowLedger,
    WindowTotals,
    check_group_by,
    group_rows,
    hour_of,
    hours_between,
)
from gateway.tenancy.limits import Level, LimitMeter, admit, to_nano
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
from gateway.tenancy.tenants import UnknownKey, UnknownTenant, checked_id


class MemoryStore:
    """Tenants, keys, limits and the usage ledger in this process's memory."""

    def __init__(
        self,
        *,
        default_limits: Limits | None = None,
        limit_window_s: float = 60.0,
        metering_window_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._defaults = default_limits or Limits()
        self._window_s = limit_window_s
        self._metering_window_s = metering_window_s
        self._clock = clock
        self._tenants: dict[str, Tenant] = {}
        self._meters: dict[str, LimitMeter] = {}
        self._key_meters: dict[tuple[str, str], LimitMeter] = {}  # (tenant, key id)
        self._keys: dict[str, tuple[ApiKey, str]] = {}
        self._by_hash: dict[str, str] = {}
        self._records: dict[tuple[str, str], UsageRecord] = {}
        self._aggregates: dict[Cell, Counters] = {}
        self._shares: dict[tuple[str, int], dict[tuple[str, str], Share]] = {}
        self._booked: dict[tuple[str, int], dict[tuple[str, str], int]] = {}
        self._idle: dict[tuple[str, int], int] = {}
        self._totals: dict[tuple[str, int], WindowTotals] = {}
        self._cursor: dict[str, int] = {}
        self._late: set[tuple[str, int]] = set()
        self._locks: dict[str, tuple[str, float]] = {}

    @property
    def windows(self) -> WindowLedger:
        """The window ledger reconciliation works on (this store itself)."""
        return self

    # Tenants

    async def create_tenant(self, tenant_id: str, limits: Limits | None = None) -> Tenant:
        """Create a tenant; an existing one is returned unchanged."""
        checked_id(tenant_id)
        if tenant_id not in self._tenants:
            self._tenants[tenant_id] = Tenant(tenant_id, limits or self._defaults, self._clock())
        return self._tenants[tenant_id]

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        """The tenant, or ``None``."""
        return self._tenants.get(tenant_id)

    async def list_tenants(self) -> Sequence[Tenant]:
        """Every tenant, by id."""
        return sorted(self._tenants.values(), key=lambda t: t.id)

    async def update_limits(self, tenant_id: str, limits: Limits) -> Tenant:
        """Replace a tenant's limits; raises ``UnknownTenant``."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            raise UnknownTenant(tenant_id)
        self._tenants[tenant_id] = replace(tenant, limits=limits)
        return self._tenants[tenant_id]

    async def delete_tenant(self, tenant_id: str) -> bool:
        """Delete a tenant and revoke its keys; its usage stays in the ledger."""
        if self._tenants.pop(tenant_id, None) is None:
            return False
        for key_id, (record, _) in list(self._keys.items()):
            if record.tenant == tenant_id:
                await self.revoke_key(key_id)
        self._meters.pop(tenant_id, None)
        for owner, key_id in [k for k in self._key_meters if k[0] == tenant_id]:
            del self._key_meters[(owner, key_id)]
        return True

    # Keys

    async def create_key(self, tenant_id: str, scope: KeyScope | None = None) -> IssuedKey:
        """Issue a key, creating the tenant with default limits if it does not exist."""
        await self.create_tenant(tenant_id)
        secret = keys.new_secret()
        record = ApiKey(keys.new_key_id(), tenant_id, keys.shown_prefix(secret), self._clock(),
                        scope=scope or KeyScope())  # fmt: skip
        digest = keys.hash_secret(secret)
        self._keys[record.id] = (record, digest)
        self._by_hash[digest] = record.id
        return IssuedKey(record, secret)

    async def list_keys(self, tenant_id: str | None = None) -> Sequence[ApiKey]:
        """Key records (never secrets), oldest first."""
        found = [r for r, _ in self._keys.values() if tenant_id in (None, r.tenant)]
        return sorted(found, key=lambda r: (r.created_at, r.id))

    async def get_key(self, key_id: str) -> ApiKey | None:
        """One key's record (revoked ones too), or ``None``."""
        entry = self._keys.get(key_id)
        return entry[0] if entry else None

    async def update_key_limits(self, key_id: str, limits: MeteredLimits) -> ApiKey:
        """Replace an active key's own limits; raises ``UnknownKey``."""
        entry = self._keys.get(key_id)
        if entry is None or entry[0].revoked or entry[0].scope.expired(self._clock()):
            raise UnknownKey(key_id)
        record, digest = entry
        record = replace(record, scope=replace(record.scope, limits=limits))
        self._keys[key_id] = (record, digest)
        return record

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; it stops working at once (there is no cache in one process)."""
        entry = self._keys.get(key_id)
        if entry is None or entry[0].revoked:
            return False
        record, digest = entry
        self._keys[key_id] = (replace(record, revoked=True), digest)
        self._by_hash.pop(digest, None)
        return True

    async def authenticate(self, secret: str) -> Principal:
        """The tenant and key behind ``secret``; raises ``Unauthenticated``."""
        known = keys.looks_like_secret(secret)
        key_id = self._by_hash.get(keys.hash_secret(secret)) if known else None
        record = self._keys[key_id][0] if key_id else None
        tenant = self._tenants.get(record.tenant) if record else None
        if record is None or tenant is None:
            raise Unauthenticated("Incorrect API key provided.")
        if record.scope.expired(self._clock()):
            raise Unauthenticated("This API key has expired.")
        return Principal(tenant, record.id, record.scope)

    # Admission and settlement

    async def admit(self, principal: Principal, *, tokens: int, cost_usd: float) -> Admission:
        """Check and reserve RPM, TPM, concurrency and budget, the key's own limits beside the
        tenant's, all or nothing (see ``limits``)."""
        tenant = principal.tenant
        rid = keys.new_request_id()
        now = self._clock()
        levels = [Level(self._meters.setdefault(tenant.id, LimitMeter()), tenant.limits)]
        own = principal.scope.limits
        metered = not own.unlimited
        if metered:
            meter = self._key_meters.setdefault((tenant.id, principal.key_id), LimitMeter())
            levels.insert(0, Level(meter, own, principal.key_label))
        admit(levels, rid, now, self._window_s, tokens, to_nano(cost_usd))
        return Admission(rid, tenant.id, principal.key_id, tokens, cost_usd, now, metered)

    async def settle(self, admission: Admission, usage: UsageRecord) -> None:
        """Release the reservation, book actuals and the record; a repeat is a no-op."""
        ident = (admission.tenant, admission.request_id)
        if ident in self._records:
            return
        usage = replace(usage, request_id=admission.request_id, tenant=admission.tenant)
        self._records[ident] = usage
        t_end = usage.started_at + usage.duration_s
        cost = to_nano(usage.cost_usd)
        tokens = usage.prompt_tokens + usage.completion_tokens
        now = self._clock()
        meters = [self._meters.setdefault(admission.tenant, LimitMeter())]
        if admission.key_metered:
            key = (admission.tenant, admission.key_id)
            meters.append(self._key_meters.setdefault(key, LimitMeter()))
        for meter in meters:
            meter.settle(admission.request_id, now, self._window_s, t_end, tokens, cost)
        cell = Cell(usage.tenant, hour_of(t_end), usage.backend, usage.model, usage.key_id)
        counters = Counters(1, usage.prompt_tokens, usage.completion_tokens, cost)
        self._aggregates.setdefault(cell, Counters()).add(counters)
        window = int(t_end // self._metering_window_s)
        share = self._shares.setdefault((usage.backend, window), {}).setdefault(
            (usage.tenant, usage.model), Share()
        )
        share.weighted_tokens += usage.weighted_tokens
        share.provisional_nano += cost
        if window <= self._cursor.get(usage.backend, window - 1):
            self._late.add((usage.backend, window))

    def track(self, admission: Admission, progress: Callable[[], UsageRecord | None]) -> None:
        """Nothing to do: the ledger dies with the process that would checkpoint it."""

    async def start(self) -> None:
        """Nothing runs in the background."""

    @property
    def degraded(self) -> bool:
        """Never: the state is in this process."""
        return False

    async def record(self, tenant: str, request_id: str) -> UsageRecord | None:
        """The ledger's record of one request, if settled."""
        return self._records.get((tenant, request_id))

    async def usage(
        self, *, tenant: str | None, start: float, end: float, group_by: Sequence[str]
    ) -> Sequence[UsageRow]:
        """Aggregates over the hours of [start, end), reconciled cost included."""
        fields = check_group_by(group_by)
        hours = hours_between(start, end)
        cells = [
            (cell, counters)
            for cell, counters in self._aggregates.items()
            if cell.hour in hours and tenant in (None, cell.tenant)
        ]
        if tenant is None:
            cells += [
                (Cell(IDLE, hour_of(w * self._metering_window_s), b, IDLE, IDLE),
                 Counters(cost_nano=n))
                for (b, w), n in self._idle.items()
                if n and hour_of(w * self._metering_window_s) in hours
            ]
        return group_rows(cells, fields)

    async def reachable(self) -> bool:
        """Always: the state is in this process."""
        return True

    async def aclose(self) -> None:
        """Nothing to release."""

    # WindowLedger

    async def add_window_totals(self, totals: Mapping[tuple[str, int], WindowTotals]) -> None:
        """Add one replica's batch; see ``WindowLedger``."""
        for (backend, window), part in totals.items():
            raised = self._totals.setdefault((backend, window), WindowTotals()).add(part)
            if raised and window <= self._cursor.get(backend, window - 1):
                self._late.add((backend, window))

    async def window_totals(self, backend: str, windows: Sequence[int]) -> dict[int, WindowTotals]:
        """Totals of ``backend`` per window (copies: the ledger's own stay unshared)."""
        return {w: replace(self._totals.get((backend, w), WindowTotals())) for w in windows}

    async def window_shares(self, backend: str, window: int) -> dict[tuple[str, str], Share]:
        """Per (tenant, model) shares of a backend window."""
        shares = self._shares.get((backend, window), {})
        return {k: Share(s.weighted_tokens, s.provisional_nano) for k, s in shares.items()}

    async def book_window(
        self,
        backend: str,
        window: int,
        window_s: float,
        allocation: Mapping[tuple[str, str], int],
        idle_nano: int,
    ) -> None:
        """Set each (tenant, model)'s adjustment so its window cost reads as reconciled."""
        hour = hour_of(window * window_s)
        adjusted = self._booked.setdefault((backend, window), {})
        shares = self._shares.get((backend, window), {})
        for (tenant, model), nano in allocation.items():
            share = shares.get((tenant, model), Share())
            adjust = nano - share.provisional_nano
            cell = Cell(tenant, hour, backend, model)
            previous = adjusted.get((tenant, model), 0)
            self._aggregates.setdefault(cell, Counters()).adjust_nano += adjust - previous
            adjusted[(tenant, model)] = adjust
        self._idle[(backend, window)] = idle_nano

    async def reconciled_through(self, backend: str) -> int | None:
        """The reconciliation cursor of ``backend``."""
        return self._cursor.get(backend)

    async def mark_reconciled(self, backend: str, window: int) -> None:
        """Advance the cursor."""
        self._cursor[backend] = max(window, self._cursor.get(backend, window))

    async def take_late_windows(self) -> list[tuple[str, int]]:
        """Windows that got records after reconciliation, emptied on read."""
        late, self._late = sorted(self._late), set()
        return late

    async def try_lock(self, name: str, ttl_s: float) -> str | None:
        """A process-local lock (one replica: never contended across processes)."""
        now = self._clock()
        held = self._locks.get(name)
        if held is not None and held[1] > now:
            return None
        token = secrets.token_hex(8)
        self._locks[name] = (token, now + ttl_s)
        return token

    async def unlock(self, name: str, token: str) -> None:
        """Release the lock if still ours."""
        if self._locks.get(name, ("", 0.0))[0] == token:
            del self._locks[name]
