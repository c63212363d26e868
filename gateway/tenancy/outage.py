"""Limits while Redis is away: each replica enforces its own share of every limit.

A tenant's requests, tokens and concurrency per replica are its limits divided by the replicas
that last announced themselves; its budget share is what was left at the last spend this
replica heard of, divided the same way. So the fleet as a whole stays within the limits (give
or take the rounding up of shares below one) instead of turning them off. A budgeted tenant
whose spend this replica never heard of is refused: nothing bounds what it could spend.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from gateway.errors import StoreUnavailable
from gateway.tenancy.limits import NANO, LimitExceeded, TenantMeter, month_of, to_nano
from gateway.tenancy.models import Limits


def share(limit: int | None, replicas: int) -> int | None:
    """One replica's part of ``limit``: at least one while the limit allows any."""
    if limit is None:
        return None
    return max(limit // replicas, min(limit, 1))


@dataclass(slots=True)
class LocalShares:
    """Per-replica meters used only while the store is unreachable."""

    window_s: float
    replicas: int = 1  # the last count of live replicas the heartbeat read
    _meters: dict[str, TenantMeter] = field(default_factory=dict)
    _used: dict[str, tuple[str, int]] = field(default_factory=dict)  # tenant: (month, nano)
    _held: dict[str, str] = field(default_factory=dict)  # request id: tenant

    def known(self, tenant: str, month: str, used_nano: int) -> None:
        """What the store last said the tenant has spent and reserved this month."""
        self._used[tenant] = (month, used_nano)

    def recovered(self, tenant: str) -> None:
        """The store answers again for ``tenant``: its own counts are the truth from now on."""
        self._meters.pop(tenant, None)

    def limits(self, tenant: str, limits: Limits, now: float) -> Limits:
        """This replica's share of ``limits``; raises when the budget cannot be bounded."""
        n = max(self.replicas, 1)
        budget = limits.monthly_budget_usd
        if budget is not None:
            month, used = self._used.get(tenant, ("", 0))
            if month != month_of(now):
                raise StoreUnavailable(
                    "The tenancy store is unreachable and this replica does not know the "
                    "tenant's spend; try again shortly."
                )
            budget = max(to_nano(budget) - used, 0) / n / NANO
        return replace(
            limits,
            requests_per_minute=share(limits.requests_per_minute, n),
            tokens_per_minute=share(limits.tokens_per_minute, n),
            max_concurrent=share(limits.max_concurrent, n),
            monthly_budget_usd=budget,
        )

    def admit(
        self, rid: str, tenant: str, limits: Limits, now: float, tokens: int, cost_nano: int
    ) -> None:
        """Check and reserve against this replica's share; raises like the store's admit."""
        local = self.limits(tenant, limits, now)
        tpm, whole = local.tokens_per_minute, limits.tokens_per_minute
        if tpm is not None and whole is not None and tpm < tokens <= whole:
            # Fits the tenant's limit but not this replica's share of it: a rate limit, not
            # the invalid request ``too_large`` would make it.
            raise LimitExceeded("tokens", retry_after=self.window_s, at=now)
        meter = self._meters.setdefault(tenant, TenantMeter())
        meter.admit(rid, local, now, self.window_s, tokens, cost_nano)
        self._held[rid] = tenant

    def holds(self, rid: str) -> bool:
        """Whether ``rid`` was admitted here, on local shares."""
        return rid in self._held

    def settle(self, rid: str, now: float, t_end: float, tokens: int, cost_nano: int) -> None:
        """Release a local admission and count its spend against the share."""
        tenant = self._held.pop(rid, None)
        meter = self._meters.get(tenant) if tenant is not None else None
        if meter is not None:
            meter.settle(rid, now, self.window_s, t_end, tokens, cost_nano)
