"""What a chaos run proves: limits, ledger and leases checked from the clients' and the
upstreams' records alone, against the bounds the README states.

Sound for any latency: an admission happened somewhere in [sent, answered] (or before the
upstream saw the request), so a rate limit counts as broken only when more than L accepted
requests lie *wholly* inside one window; concurrency is what the upstreams served at once, per
client request (its fallback attempts joined), which the gateway's leases enclose.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bench.faults.upstream import Attempt
from gateway.tenancy.outage import share

# An upstream learns a beat after the gateway that a connection closed; the gateway may have
# released the lease and admitted the next request in that beat.
GONE_GRACE_S = 0.02
# What may still have been in flight (sent, never read) when the gateway hung up on an upstream:
# the tokens sent this long before the upstream saw it go, or at least one.
IN_FLIGHT_S = 0.1
# The heartbeat may take this long besides its interval to write a checkpoint.
BEAT_SLACK_S = 0.5

Interval = tuple[float, float]


@dataclass(frozen=True)
class Tenant:
    """A tenant of the run, its limits and its clients."""

    name: str
    workers: int
    rpm: int | None = None  # per ``window_s``
    max_concurrent: int | None = None
    budget_usd: float | None = None


@dataclass(frozen=True)
class Timeline:
    """When the faults happened (wall clock), and the settings the bounds derive from."""

    start: float
    replicas: int
    lease_ttl_s: float
    window_s: float
    redis_down: float
    redis_up: float
    victim: int
    killed: float
    restarted: float | None


@dataclass(frozen=True)
class Leases:
    """Concurrency leases and reservations found in Redis for the run's tenants."""

    live: int  # leases whose deadline is still ahead: renewed by someone
    expired: int  # lapsed, not yet swept (the next admission sweeps them)
    holds: int  # outstanding reservations
    reserved_usd: float


@dataclass(frozen=True)
class Ledger:
    """One tenant's row of ``/admin/usage``."""

    requests: int
    completion_tokens: int
    cost_usd: float


@dataclass
class Billing:
    """One tenant's tokens: what the upstreams sent, what must be billed, what was.

    Billable: a stream is billed every token its attempts sent; a non-streamed answer that
    broke mid-way is restarted elsewhere and only its last attempt is billed (the rest:
    ``wasted``).
    A request may be billed less than that only where the README allows: by what a killed
    replica's stream received since its last checkpoint (a request is checkpointed once it is
    a heartbeat old, then every heartbeat: its last two heartbeats' tokens), and by what was in
    flight when the gateway hung up on an attempt (``IN_FLIGHT_S`` of tokens, at least one).
    ``offenders``: every other difference.
    """

    sent: int = 0
    billable: int = 0
    wasted: int = 0
    billed: int = 0  # the per-request ledger records, summed
    allowed: int = 0  # the shortfall the bounds above allow, summed
    offenders: list[str] = field(default_factory=list)

    @property
    def short(self) -> int:
        """Billable tokens the ledger lacks (negative: it bills more than was received)."""
        return self.billable - self.billed


@dataclass
class Row:
    """The figures of one tenant."""

    tenant: Tenant
    sent: int = 0
    ok: int = 0
    peak_upstream: tuple[int, int] = (0, 0)  # (steady, while degraded)
    peak_client: tuple[int, int] = (0, 0)
    peak_window: tuple[int, int] = (0, 0)
    tokens: Billing = field(default_factory=Billing)
    ledger: Ledger = field(default_factory=lambda: Ledger(0, 0, 0.0))


def degraded_spans(timeline: Timeline) -> list[Interval]:
    """While limits were per-replica shares: from Redis's death until a lease TTL after its
    return (each replica lists the leases it admitted on its shares within a heartbeat)."""
    return [(timeline.redis_down, timeline.redis_up + timeline.lease_ttl_s)]


def upstream_requests(attempts: Iterable[Attempt]) -> dict[str, Interval]:
    """Each client request as the upstreams served it: first attempt's start to last's end."""
    out: dict[str, Interval] = {}
    for a in attempts:
        end = a.end - GONE_GRACE_S if a.ended == "gone" else a.end
        lo, hi = out.get(a.rid, (a.start, end))
        out[a.rid] = (min(lo, a.start), max(hi, end))
    return out


def _inside(t: float, spans: Sequence[Interval]) -> bool:
    return any(a <= t <= b for a, b in spans)


def peak(intervals: Iterable[Interval], spans: Sequence[Interval]) -> tuple[int, int]:
    """The most intervals open at once, outside ``spans`` and inside them."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = steady = degraded = 0
    for t, step in events:  # at equal times ends (-1) come first
        level += step
        if step > 0:
            if _inside(t, spans):
                degraded = max(degraded, level)
            else:
                steady = max(steady, level)
    return steady, degraded


def window_peak(
    admissions: Sequence[Interval], window_s: float, spans: Sequence[Interval]
) -> tuple[int, int]:
    """The most admissions wholly inside one window ``[lo, lo + window_s)``, for windows
    clear of ``spans`` and windows overlapping them."""
    ordered = sorted(admissions)
    steady = degraded = 0
    for i, (lo, _) in enumerate(ordered):
        end, count, j = lo + window_s, 0, i
        while j < len(ordered) and ordered[j][0] < end:
            count += ordered[j][1] < end
            j += 1
        if any(a < end and lo <= b for a, b in spans):
            degraded = max(degraded, count)
        else:
            steady = max(steady, count)
    return steady, degraded


def degraded_limit(limit: int, replicas: int) -> int:
    """What a limit may reach while Redis is away: the fleet-wide admissions still in force
    plus every replica's share."""
    return limit + replicas * (share(limit, replicas) or 0)


def billing(
    attempts: Sequence[Attempt], records: dict[str, int], timeline: Timeline, left: set[str]
) -> Billing:
    """Compare one tenant's attempts, request by request, with its ledger records.

    ``left``: requests whose client went away (the gateway hung up on the upstream, which may
    have sent its last tokens before it noticed).
    """
    by_rid: dict[str, list[Attempt]] = defaultdict(list)
    for a in attempts:
        by_rid[a.rid].append(a)
    since = timeline.killed - 2 * timeline.lease_ttl_s / 3 - BEAT_SLACK_S
    out = Billing()
    for rid, group in by_rid.items():
        group.sort(key=lambda a: a.start)
        counts = [len(a.times) for a in group]
        kept = sum(counts) if group[0].stream else counts[-1]
        allowed = sum(
            _in_flight(a)
            for a in group
            if a.times and (a.ended == "gone" or (rid in left and a is group[-1]))
        )
        allowed += sum(
            sum(1 for t in a.times if t >= since)
            for a in group
            if a.replica == timeline.victim and a.start <= timeline.killed and a.end >= since
        )
        billed = records.get(rid, 0)
        out.sent += sum(counts)
        out.billable += kept
        out.wasted += sum(counts) - kept
        out.billed += billed
        out.allowed += allowed
        if not 0 <= kept - billed <= allowed:
            out.offenders.append(f"{rid} (received {kept}, billed {billed}, bound {allowed})")
    for rid, billed in records.items():
        if rid not in by_rid and billed:
            out.billed += billed
            out.offenders.append(f"{rid} (received 0, billed {billed})")
    return out


def _in_flight(attempt: Attempt) -> int:
    return max(1, sum(1 for t in attempt.times if t >= attempt.end - IN_FLIGHT_S))
