"""The usage ledger's shared shapes: hourly aggregates, window shares, and report grouping.

Both stores keep, per tenant x hour x backend x model x key, the requests, tokens and provisional
cost, per tenant x hour x backend x model the reconciliation adjustment (all costs in integer
nano-dollars; a report by key spreads an adjustment over the keys by provisional cost, so the
keys' costs add up to the tenant's exactly), per tenant x backend x window
the weighted tokens that instance cost is shared by, and per backend x window the instance-time
that was billed. ``WindowLedger`` is what metering's reconciler needs from a store.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from gateway.errors import InvalidRequest
from gateway.tenancy.limits import NANO
from gateway.tenancy.models import UsageRow

GROUPS = ("tenant", "key", "backend", "model", "hour", "day")
IDLE = "(idle)"  # tenant, key and model of the rows that book an idle window's instance cost
UNATTRIBUTED = "(unattributed)"  # the key of usage aggregated before the ledger kept keys


@dataclass(slots=True)
class Counters:
    """Summed usage of one aggregate cell (costs in nano-dollars)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nano: int = 0  # provisional, or exact for per-token prices
    adjust_nano: int = 0  # what reconciliation moved

    def add(self, other: Counters) -> None:
        """Accumulate ``other`` into this cell."""
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_nano += other.cost_nano
        self.adjust_nano += other.adjust_nano


@dataclass(frozen=True, slots=True)
class Cell:
    """Where an aggregate belongs: tenant, hour (unix hour index), backend, model, key.

    ``key`` is ``None`` for a reconciliation adjustment, which belongs to no one key.
    """

    tenant: str
    hour: int
    backend: str
    model: str
    key: str | None = None


@dataclass(slots=True)
class WindowTotals:
    """A backend's traffic and billed instance-time in one metering window.

    Token counts add up over replicas; ``instance_seconds`` is each replica's observation of
    the same fleet, so the most any replica saw is kept (``None``: nobody observed the window).
    """

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    weighted_tokens: float = 0.0
    instance_seconds: float | None = None

    def add(self, other: WindowTotals) -> bool:
        """Merge ``other`` in; whether it raised the instance-seconds observed."""
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.weighted_tokens += other.weighted_tokens
        seen = other.instance_seconds
        if seen is None or (self.instance_seconds is not None and seen <= self.instance_seconds):
            return False
        self.instance_seconds = seen
        return True


@dataclass(slots=True)
class Share:
    """One tenant x model's part of a backend window: what reconciliation divides by."""

    weighted_tokens: float = 0.0
    provisional_nano: int = 0


class WindowLedger(Protocol):
    """What window flushing and reconciliation need from the store."""

    async def add_window_totals(self, totals: Mapping[tuple[str, int], WindowTotals]) -> None:
        """Add one replica's batch: token increments, and its instance-seconds so far.

        Instance-seconds keep the per-window maximum over replicas; raising it in a window
        that was already reconciled marks that window late, so it is booked again.
        """
        ...

    async def window_totals(self, backend: str, windows: Sequence[int]) -> dict[int, WindowTotals]:
        """Fleet-wide totals of ``backend`` for the given windows (absent ones are empty)."""
        ...

    async def window_shares(self, backend: str, window: int) -> dict[tuple[str, str], Share]:
        """Per (tenant, model) weighted tokens and provisional cost of a backend window."""
        ...

    async def book_window(
        self,
        backend: str,
        window: int,
        window_s: float,
        allocation: Mapping[tuple[str, str], int],
        idle_nano: int,
    ) -> None:
        """Record a window's reconciled cost per (tenant, model); idempotent, re-bookable."""
        ...

    async def reconciled_through(self, backend: str) -> int | None:
        """The last window reconciled for ``backend``, if any."""
        ...

    async def mark_reconciled(self, backend: str, window: int) -> None:
        """Advance the reconciliation cursor."""
        ...

    async def take_late_windows(self) -> list[tuple[str, int]]:
        """(backend, window) pairs that received records after they were reconciled."""
        ...

    async def try_lock(self, name: str, ttl_s: float) -> str | None:
        """A fleet-wide lock's token, or ``None`` if another replica holds it."""
        ...

    async def unlock(self, name: str, token: str) -> None:
        """Release a lock this replica holds."""
        ...


def hour_of(t: float) -> int:
    """The unix hour index aggregates are keyed by."""
    return int(t // 3600)


def check_group_by(group_by: Sequence[str]) -> tuple[str, ...]:
    """Validated grouping fields; raises ``InvalidRequest`` naming the bad one."""
    for name in group_by:
        if name not in GROUPS:
            raise InvalidRequest(
                f"Cannot group usage by {name!r}; use any of {', '.join(GROUPS)}.", param="group_by"
            )
    return tuple(dict.fromkeys(group_by))


def _labels(cell: Cell, group_by: Sequence[str]) -> tuple[tuple[str, str], ...]:
    start = cell.hour * 3600
    values = {
        "tenant": cell.tenant,
        "key": cell.key or UNATTRIBUTED,
        "backend": cell.backend,
        "model": cell.model,
        "hour": time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(start)),
        "day": time.strftime("%Y-%m-%d", time.gmtime(start)),
    }
    return tuple((name, values[name]) for name in group_by)


def group_rows(cells: Iterable[tuple[Cell, Counters]], group_by: Sequence[str]) -> list[UsageRow]:
    """Sum aggregate cells into report rows, reconciled cost included, sorted by group."""
    if "key" in group_by:
        cells = spread_adjustments(cells)
    sums: dict[tuple[tuple[str, str], ...], Counters] = {}
    for cell, counters in cells:
        sums.setdefault(_labels(cell, group_by), Counters()).add(counters)
    return [
        UsageRow(
            group=dict(labels),
            requests=c.requests,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            cost_usd=(c.cost_nano + c.adjust_nano) / NANO,
        )
        for labels, c in sorted(sums.items())
    ]


def spread_adjustments(
    cells: Iterable[tuple[Cell, Counters]],
) -> list[tuple[Cell, Counters]]:
    """The cells with each adjustment (key ``None``) moved onto the keys of its tenant x hour x
    backend x model in proportion to their provisional cost (else tokens, else requests).

    Reconciliation books a window's cost per tenant and model, not per key, so a key's share is
    an estimate; the shares add up to the adjustment exactly (the remainder goes to the largest).
    """
    out: list[tuple[Cell, Counters]] = []
    keyed: dict[Cell, list[tuple[Cell, Counters]]] = {}
    adjustments: dict[Cell, int] = {}
    for cell, counters in cells:
        base = replace(cell, key=None)
        if cell.key is None:
            adjustments[base] = adjustments.get(base, 0) + counters.adjust_nano
            continue
        out.append((cell, counters))
        keyed.setdefault(base, []).append((cell, counters))
    for base, nano in adjustments.items():
        parts = keyed.get(base, [])
        weights = [c.cost_nano for _, c in parts]
        if sum(weights) <= 0:
            weights = [c.prompt_tokens + c.completion_tokens for _, c in parts]
        if sum(weights) <= 0:
            weights = [c.requests for _, c in parts]
        total = sum(weights)
        if total <= 0:
            out.append((replace(base, key=UNATTRIBUTED), Counters(adjust_nano=nano)))
            continue
        shares = [nano * w // total for w in weights]
        shares[weights.index(max(weights))] += nano - sum(shares)
        for (cell, _), share in zip(parts, shares, strict=True):
            out.append((cell, Counters(adjust_nano=share)))
    return out


def hours_between(start: float, end: float) -> range:
    """The hour indexes whose aggregates a [start, end) query reads (hour granularity)."""
    # ``ceil`` keeps an end on the hour exclusive (``end - epsilon`` rounds back to it at unix
    # times, where a float's step is ~2e-7 s).
    return range(hour_of(start), math.ceil(end / 3600)) if end > start else range(0)
