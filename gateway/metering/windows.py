"""Metering windows: per-replica totals flushed in batches, and fleet-wide reconciliation.

Window ``w`` covers [w x W, (w+1) x W) of completion times. It is reconciled once
``now >= (w + 2) x W`` (a window of grace for in-flight settlements), by the one replica that
holds the ``reconcile`` lock: the window's cost, its instance-seconds x ``usd_per_hour``, is
shared among tenant x model by weighted tokens with largest remainders in nano-dollars, so the
shares add up to it exactly; a window without tokens is booked as idle, and one without
instance-time (a pool scaled to zero) costs nothing. Settlements, or a larger instance-time,
that land after that re-open the window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.metering.cost import BackendPrice, PriceBook
from gateway.metering.instances import InstanceTime
from gateway.tenancy.ledger import Share, WindowLedger, WindowTotals

LOCK = "reconcile"
MAX_CATCH_UP = 10_000  # windows booked in one pass after a long fleet-wide outage
RATE_WINDOWS = 5  # closed windows the live rate looks back over


@dataclass(slots=True)
class OpenWindows:
    """This replica's not-yet-flushed totals and instance-time per (backend, window); no I/O."""

    window_s: float
    pending: dict[tuple[str, int], WindowTotals] = field(default_factory=dict)
    instances: InstanceTime = field(init=False)

    def __post_init__(self) -> None:
        self.instances = InstanceTime(self.window_s)

    def observe(
        self, backend: str, t: float, prompt: int, completion: int, weighted: float
    ) -> None:
        """Count one finished generation."""
        totals = self.pending.setdefault((backend, int(t // self.window_s)), WindowTotals())
        totals.requests += 1
        totals.prompt_tokens += prompt
        totals.completion_tokens += completion
        totals.weighted_tokens += weighted

    def take(self) -> dict[tuple[str, int], WindowTotals]:
        """Everything pending, with this replica's instance-seconds so far, leaving nothing."""
        taken, self.pending = self.pending, {}
        for slot, seconds in self.instances.take().items():
            taken.setdefault(slot, WindowTotals()).add(WindowTotals(instance_seconds=seconds))
        return taken

    def put_back(self, batch: Mapping[tuple[str, int], WindowTotals]) -> None:
        """Return a batch whose flush failed, so the next flush carries it."""
        for slot, part in batch.items():
            self.pending.setdefault(slot, WindowTotals()).add(part)


def allocate(cost_nano: int, shares: Mapping[tuple[str, str], Share]) -> dict[tuple[str, str], int]:
    """Split ``cost_nano`` by weighted tokens; integer parts that sum to it exactly."""
    total = sum(s.weighted_tokens for s in shares.values())
    if total <= 0:
        return {}
    exact = {k: cost_nano * s.weighted_tokens / total for k, s in shares.items()}
    parts = {k: math.floor(v) for k, v in exact.items()}
    left = cost_nano - sum(parts.values())
    for k in sorted(exact, key=lambda k: (parts[k] - exact[k], k))[:left]:
        parts[k] += 1
    return parts


class Reconciler:
    """Books closed windows of instance-priced backends and keeps live rates current."""

    def __init__(self, ledger: WindowLedger, prices: PriceBook, window_s: float) -> None:
        self.ledger = ledger
        self.prices = prices
        self.window_s = window_s

    def last_closed(self, now: float) -> int:
        """The newest window that may be reconciled at ``now``."""
        return math.floor(now / self.window_s) - 2

    async def run(self, now: float) -> int:
        """One pass if this replica wins the lock; returns how many windows it booked."""
        # Short enough that a replica dying mid-pass delays the next pass by about a window.
        token = await self.ledger.try_lock(LOCK, ttl_s=min(30.0, max(2.0, 2 * self.window_s)))
        if token is None:
            return 0
        try:
            booked = 0
            late = await self.ledger.take_late_windows()
            for price in self.prices.prices.values():
                if price.hourly:
                    booked += await self._backend(price, now, late)
            return booked
        finally:
            await self.ledger.unlock(LOCK, token)

    async def _backend(self, price: BackendPrice, now: float, late: list[tuple[str, int]]) -> int:
        last = self.last_closed(now)
        done = await self.ledger.reconciled_through(price.name)
        first = last if done is None else max(done + 1, last - MAX_CATCH_UP)
        again = [w for b, w in late if b == price.name and (done is None or w <= done)]
        windows = [*again, *range(first, last + 1)]
        totals = await self.ledger.window_totals(price.name, windows)
        for window in windows:
            await self.book(price, window, totals[window].instance_seconds)
        if last >= first:
            await self.ledger.mark_reconciled(price.name, last)
        return len(windows)

    async def book(self, price: BackendPrice, window: int, instance_seconds: float | None) -> None:
        """Reconcile one window of one backend (idempotent)."""
        cost = price.window_cost_nano(self.window_s, instance_seconds)
        shares = await self.ledger.window_shares(price.name, window)
        allocation = allocate(cost, shares)
        idle = 0 if allocation else cost
        await self.ledger.book_window(price.name, window, self.window_s, allocation, idle)

    async def refresh_rates(self, now: float) -> None:
        """Live $ per weighted token: the instance cost of the last closed busy windows."""
        last = math.floor(now / self.window_s) - 1
        windows = list(range(last - RATE_WINDOWS + 1, last + 1))
        for price in self.prices.prices.values():
            if not price.hourly:
                continue
            totals = await self.ledger.window_totals(price.name, windows)
            self.prices.measure(price.name, totals.values(), self.window_s)
