"""Limits while Redis is away: each replica enforces its own share of every limit.

A tenant's requests, tokens and concurrency per replica are its limits divided by the replicas
that last announced themselves; its budget share is what was left at the last spend this
replica heard of, divided the same way. So the fleet as a whole stays within the limits (give
or take the rounding up of shares below one) instead of turning them off. A budgeted tenant
whose spend this replica never heard of is refused: nothing bounds what it could spend. A key
with limits of its own is held to its share of them the same way, beside its tenant.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TypeVar

from gateway.errors import GatewayError, StoreUnavailable
from gateway.tenancy.limits import (
    NANO,
    Level,
    LimitExceeded,
    LimitMeter,
    admit,
    binding,
    month_of,
    to_nano,
)
from gateway.tenancy.models import MeteredLimits, Principal

L = TypeVar("L", bound=MeteredLimits)


def key_meter(tenant: str, key_id: str) -> str:
    """The id a key's own meter goes by beside its tenant's (tenant ids hold no ``/``)."""
    return f"{tenant}/{key_id}"


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
    # Meters by tenant id, or ``key_meter`` for a key's own limits.
    _meters: dict[str, LimitMeter] = field(default_factory=dict)
    _used: dict[str, tuple[str, int]] = field(default_factory=dict)  # meter: (month, nano)
    _held: dict[str, tuple[str, ...]] = field(default_factory=dict)  # request id: its meters

    def known(self, meter: str, month: str, used_nano: int) -> None:
        """What the store last said a tenant (or key) has spent and reserved this month."""
        self._used[meter] = (month, used_nano)

    def recovered(self, meter: str) -> None:
        """The store answers again for ``meter``: its own counts are the truth from now on."""
        self._meters.pop(meter, None)

    def limits(self, meter: str, limits: L, now: float) -> L:
        """This replica's share of ``limits``; raises when the budget cannot be bounded."""
        n = max(self.replicas, 1)
        budget = limits.monthly_budget_usd
        if budget is not None:
            month, used = self._used.get(meter, ("", 0))
            if month != month_of(now):
                whose = "key's" if "/" in meter else "tenant's"
                raise StoreUnavailable(
                    f"The tenancy store is unreachable and this replica does not know the "
                    f"{whose} spend; try again shortly."
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
        self, rid: str, principal: Principal, now: float, tokens: int, cost_nano: int
    ) -> None:
        """Check and reserve against this replica's shares; raises like the store's admit."""
        tenant = principal.tenant
        levels: list[tuple[str, MeteredLimits, str | None]] = [(tenant.id, tenant.limits, None)]
        if not principal.scope.limits.unlimited:
            own = (key_meter(tenant.id, principal.key_id), principal.scope.limits,
                   principal.key_label)  # fmt: skip
            levels.insert(0, own)
        checked: list[Level] = []
        short: list[GatewayError] = []
        for meter, limits, key in levels:
            local = self.limits(meter, limits, now)
            tpm, whole = local.tokens_per_minute, limits.tokens_per_minute
            if tpm is not None and whole is not None and tpm < tokens <= whole:
                # Fits the whole limit but not this replica's share of it: a rate limit, not
                # the invalid request ``too_large`` would make it.
                short.append(LimitExceeded("tokens", retry_after=self.window_s, at=now, key=key))
                continue
            checked.append(Level(self._meters.setdefault(meter, LimitMeter()), local, key))
        if short:
            window = self.window_s
            found = (lv.meter.check(lv.limits, now, window, tokens, lv.key) for lv in checked)
            raise max([*short, *(r for r in found if r)], key=binding)
        admit(checked, rid, now, self.window_s, tokens, cost_nano)
        self._held[rid] = tuple(meter for meter, _, _ in levels)

    def holds(self, rid: str) -> bool:
        """Whether ``rid`` was admitted here, on local shares."""
        return rid in self._held

    def settle(self, rid: str, now: float, t_end: float, tokens: int, cost_nano: int) -> None:
        """Release a local admission and count its spend against the shares it was held to."""
        for name in self._held.pop(rid, ()):
            meter = self._meters.get(name)
            if meter is not None:
                meter.settle(rid, now, self.window_s, t_end, tokens, cost_nano)
