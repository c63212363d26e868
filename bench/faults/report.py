"""The chaos run's table and its verdict: which invariants held, which broke."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.faults.load import Outcome
from bench.faults.upstream import Attempt
from bench.faults.verdict import (
    Leases,
    Ledger,
    Row,
    Tenant,
    Timeline,
    billing,
    degraded_limit,
    degraded_spans,
    peak,
    upstream_requests,
    window_peak,
)


@dataclass(frozen=True)
class Evidence:
    """Everything a run recorded."""

    tenants: Sequence[Tenant]
    timeline: Timeline
    outcomes: Sequence[Outcome]
    attempts: Sequence[Attempt]
    ledger: dict[str, Ledger]
    records: dict[str, dict[str, int]]  # tenant -> client request id -> tokens billed
    leases_after_ttl: Leases
    leases_swept: Leases
    worst_request_usd: float


def rows(ev: Evidence) -> list[Row]:
    """Per tenant: requests, peaks of concurrency and of window admissions, tokens."""
    served = upstream_requests(ev.attempts)
    spans = degraded_spans(ev.timeline)
    out = []
    for tenant in ev.tenants:
        mine = [o for o in ev.outcomes if o.tenant == tenant.name]
        attempts = [a for a in ev.attempts if a.tenant == tenant.name]
        rids = {o.rid for o in mine}
        row = Row(tenant, sent=len(mine), ok=sum(o.status == 200 for o in mine))
        row.peak_upstream = peak([iv for rid, iv in served.items() if rid in rids], spans)
        row.peak_client = peak(
            [(o.answered, o.ended) for o in mine if o.status == 200 and o.answered], spans
        )
        admitted = []
        for o in mine:
            hi = o.answered if o.status == 200 and o.answered else float("inf")
            if o.rid in served:
                hi = min(hi, served[o.rid][0])
            if hi != float("inf"):
                admitted.append((o.sent, hi))
        row.peak_window = window_peak(admitted, ev.timeline.window_s, spans)
        left = {o.rid for o in mine if o.how == "left"}
        row.tokens = billing(attempts, ev.records.get(tenant.name, {}), ev.timeline, left)
        row.ledger = ev.ledger.get(tenant.name, Ledger(0, 0, 0.0))
        out.append(row)
    return out


def limit_breaches(row: Row, replicas: int) -> list[str]:
    """The limits a tenant's peaks went past: the limit with Redis up, the limit plus every
    replica's share while Redis was away."""
    t, out = row.tenant, []
    for name, limit, (steady, away) in (
        ("concurrency", t.max_concurrent, row.peak_upstream),
        ("requests per window", t.rpm, row.peak_window),
    ):
        if limit is None:
            continue
        if steady > limit:
            out.append(f"{t.name}: {name} reached {steady} > {limit} with Redis up")
        if away > degraded_limit(limit, replicas):
            out.append(f"{t.name}: {name} reached {away} > {degraded_limit(limit, replicas)} "
                       "while Redis was away")  # fmt: skip
    return out


def failures(ev: Evidence, table: Sequence[Row]) -> list[str]:
    """Every hard invariant that broke, in words (empty: the run passed)."""
    bad: list[str] = []
    for row in table:
        t, tok = row.tenant, row.tokens
        bad += limit_breaches(row, ev.timeline.replicas)
        if row.ledger.completion_tokens != tok.billed:
            bad.append(f"{t.name}: /admin/usage bills {row.ledger.completion_tokens} tokens, "
                       f"its requests' records {tok.billed}")  # fmt: skip
        if tok.offenders:
            bad.append(f"{t.name}: {len(tok.offenders)} requests billed outside their bound: "
                       + ", ".join(tok.offenders[:3]))  # fmt: skip
    if ev.leases_after_ttl.live:
        bad.append(f"{ev.leases_after_ttl.live} leases still live after the lease TTL")
    swept = ev.leases_swept
    if swept.live or swept.expired or swept.holds or swept.reserved_usd:
        bad.append(f"after a sweep: {swept.live + swept.expired} leases, {swept.holds} holds, "
                   f"${swept.reserved_usd:.6f} reserved left over")  # fmt: skip
    return bad


def render(ev: Evidence, table: Sequence[Row], bad: Sequence[str]) -> str:
    """The run's figures as a compact text table."""
    tl = ev.timeline
    at = _offset(tl.start)
    back = f", restarted {at(tl.restarted)}" if tl.restarted else ""
    faults = Counter(a.fault for a in ev.attempts)
    out = [
        f"faults: Redis kill -9 at {at(tl.redis_down)}, back {at(tl.redis_up)}; replica "
        f"{tl.victim} kill -9 at {at(tl.killed)}{back}; of {len(ev.attempts):,} upstream "
        f"attempts {faults['hang']} hung before the first token, {faults['stall']} stalled "
        f"and {faults['die']} died mid-stream",
        *_statuses(ev.outcomes),
        "",
        f"{'':<28}{'concurrency':^17}{'per window':^12}",
        f"{'tenant':<8}{'limits':<20}{'up':>4}{'away':>7}{'cli':>6}{'up':>5}{'away':>7}"
        f"{'sent':>7}{'200':>6}{'ledger tok':>12}{'billable':>10}{'short':>7}{'bound':>7}"
        f"{'cost $':>9}",
    ]  # fmt: skip
    n = tl.replicas
    for r in table:
        t, tok = r.tenant, r.tokens
        out.append(
            f"{t.name:<8}{_limits(t, tl.window_s):<20}{r.peak_upstream[0]:>4}"
            f"{_away(r.peak_upstream[1], t.max_concurrent, n):>7}"
            f"{r.peak_client[0]:>3}/{r.peak_client[1]:<2}{r.peak_window[0]:>5}"
            f"{_away(r.peak_window[1], t.rpm, n):>7}{r.sent:>7,}{r.ok:>6,}"
            f"{r.ledger.completion_tokens:>12,}{tok.billable:>10,}{tok.short:>7}{tok.allowed:>7}"
            f"{r.ledger.cost_usd:>9.4f}"
        )
    out += ["", *_summary(ev, table)]
    out.append("verdict: " + ("every invariant held" if not bad else "BROKEN"))
    out += [f"  - {b}" for b in bad]
    return "\n".join(out)


def _summary(ev: Evidence, table: Sequence[Row]) -> list[str]:
    n = ev.timeline.replicas
    over = sum(len(limit_breaches(r, n)) for r in table)
    billed = sum(r.ledger.completion_tokens for r in table)
    billable = sum(r.tokens.billable for r in table)
    sent, wasted = sum(r.tokens.sent for r in table), sum(r.tokens.wasted for r in table)
    a, s = ev.leases_after_ttl, ev.leases_swept
    lines = [
        f"limit violations: {over} (up: peak with Redis up, at most the limit; away: while "
        f"Redis was away, at most the limit + {n} replicas' shares; cli: as clients saw it)",
        f"ledger vs upstream: {billed:,} tokens billed, {billable:,} billable of {sent:,} sent "
        f"({wasted:,} in answers restarted elsewhere); short {billable - billed:,}, bound "
        f"{sum(r.tokens.allowed for r in table):,} (what the killed replica's streams got in "
        "its last two heartbeats; what was in flight when the gateway hung up on an upstream)",
        f"leases left over after the TTL: {a.live} live, {a.expired} lapsed, {a.holds} holds "
        f"(${a.reserved_usd:.4f}); after one sweeping admission per tenant: "
        f"{s.live + s.expired} leases, {s.holds} holds, ${s.reserved_usd:.4f}",
    ]  # fmt: skip
    for r in table:
        if r.tenant.budget_usd is not None:
            lines.append(f"budget of {r.tenant.name}: ${r.ledger.cost_usd:.4f} spent of "
                         f"${r.tenant.budget_usd:g} (one request may cost up to "
                         f"${ev.worst_request_usd:.4f})")  # fmt: skip
    return lines


def _statuses(outcomes: Sequence[Outcome]) -> list[str]:
    answered = Counter(
        "200" if o.status == 200 else f"{o.status} {o.code}".strip()
        for o in outcomes
        if o.status is not None
    )
    none = Counter(o.how for o in outcomes if o.status is None)
    five = sum(v for k, v in answered.items() if k[:1] == "5")
    streams = Counter(o.how for o in outcomes if o.stream and o.status == 200)
    events = Counter(o.code for o in outcomes if o.how == "error_event")
    return [
        f"requests {len(outcomes):,}: {_counts(answered)}; 5xx {five}; no answer: "
        f"{_counts(none)}",
        f"streams answered 200: {streams['ok']:,} to [DONE], {streams['left']:,} left by their "
        f"client, {streams['broken']:,} broken (replica killed), {streams['error_event']:,} "
        f"ended by an error event ({_counts(events)})",
    ]  # fmt: skip


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counter.items())) or "none"


def _offset(start: float) -> Callable[[float | None], str]:
    def at(t: float | None) -> str:
        return f"{(t or start) - start:.1f} s"

    return at


def _limits(t: Tenant, window_s: float) -> str:
    parts = []
    if t.max_concurrent is not None:
        parts.append(f"conc {t.max_concurrent}")
    if t.rpm is not None:
        parts.append(f"{t.rpm}/{window_s:g}s")
    if t.budget_usd is not None:
        parts.append(f"${t.budget_usd:g}")
    return " ".join(parts)


def _away(peak: int, limit: int | None, replicas: int) -> str:
    return f"{peak}/{degraded_limit(limit, replicas)}" if limit is not None else str(peak)
