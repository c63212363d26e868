"""Limit semantics shared by both stores (the Lua scripts mirror ``LimitMeter`` exactly).

Requests per window: an exact sliding log. A request is accepted iff fewer than L were accepted
in the trailing window (t - W, t]; so at most L in any trailing window, and none refused while
fewer than L were. ``retry_after`` is when the oldest of those leaves the window.

Tokens per window: W is cut into ``BUCKETS`` buckets (one second each at the default 60 s).
Admission reserves the request's ``tokens`` (prompt + ``max_tokens``) in the current bucket;
settlement removes that reservation and adds the actual prompt + completion tokens in the bucket
of the completion time. When a request names no ``max_tokens``, serving reserves its configured
default (``server.default_max_tokens``), so a long answer may use more than was reserved: the
excess is counted at settlement and delays later admissions. A request needing more than the
whole limit is refused as invalid, since waiting would never help.

Concurrency: a lease per admitted request, released at settlement. On Redis a lease lives a few
seconds and the replica that holds it renews it while the request runs (``leases``), so when a
replica dies its leases, and the tokens and cost they reserved, are given back within seconds.
Budget: admitted while provisional spend plus outstanding
reservations is below the monthly budget; each admission reserves its worst-case cost, so the
spend can pass the budget by at most one in-flight request.

Levels: a key with limits of its own is metered twice, by its own meter and its tenant's.
Admission checks both levels, then reserves at both or at neither; when both refuse, the answer
is the refusal that binds longest (a spent budget, then a request too large for a limit, then the
rate limit whose retry-after is latest; the key's on a tie), so retrying after it can succeed.
A key's meter counts only what it was admitted while it had limits of its own.
"""

from __future__ import annotations

import calendar
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.errors import GatewayError, InvalidRequest, QuotaExceeded, RateLimited
from gateway.tenancy.models import MeteredLimits

BUCKETS = 60  # token buckets per window
LEASE_MAX_S = 3600.0  # the longest a request may hold a lease: longer than any may run
NANO = 1_000_000_000  # costs are kept in integer nano-dollars so sums are exact


def to_nano(usd: float) -> int:
    """USD as integer nano-dollars (the unit every ledger sum is kept in)."""
    return round(usd * NANO)


_month: tuple[float, float, str] = (0.0, 0.0, "")  # [start, end) of the last month asked


def month_of(t: float) -> str:
    """The UTC calendar month a budget period is keyed by, e.g. ``2025-03``."""
    global _month
    start, end, label = _month
    if start <= t < end:  # every request asks, nearly always about the same month
        return label
    tm = time.gmtime(t)
    year, month = tm.tm_year, tm.tm_mon
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    end = calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))
    _month = (start, end, f"{year:04d}-{month:02d}")
    return _month[2]


class LimitExceeded(RateLimited):
    """A rate limit refusal, saying which limit, whose (the tenant's or a key's) and at what
    store time it happened."""

    def __init__(
        self, limit: str, *, retry_after: float, at: float, key: str | None = None
    ) -> None:
        whose = f" ({key})" if key else ""
        super().__init__(f"Rate limit reached for {limit}{whose}.", retry_after=retry_after)
        self.limit = limit  # "requests", "tokens" or "concurrency"
        self.key = key  # the key whose own limit refused (``Principal.key_label``); None: tenant
        self.at = at


def too_large(tokens: int, limit: int, key: str | None = None) -> InvalidRequest:
    """The refusal for a request that alone exceeds a token limit (the tenant's or ``key``'s)."""
    whose = f"the limit of {key}" if key else "the tenant's limit"
    return InvalidRequest(
        f"This request needs {tokens} tokens, more than {whose} of {limit} "
        "tokens per minute; lower max_tokens or the prompt.",
        param="max_tokens",
    )


def over_budget(key: str | None = None) -> QuotaExceeded:
    """The refusal for a tenant (or ``key``) whose monthly budget is spent."""
    whose = f"the monthly budget of {key}" if key else "the tenant's monthly budget"
    return QuotaExceeded(f"You exceeded your current quota: {whose} is spent.")


def binding(refusal: GatewayError) -> tuple[int, float]:
    """How long a refusal binds, to pick one of two levels' refusals (the larger binds longer)."""
    if isinstance(refusal, QuotaExceeded):
        return (2, 0.0)
    if isinstance(refusal, LimitExceeded):
        return (0, refusal.retry_after)
    return (1, 0.0)  # too large for a limit: waiting never helps


@dataclass(slots=True)
class Hold:
    """One admitted request's outstanding reservation."""

    deadline: float
    tokens: int
    bucket: int
    cost_nano: int


@dataclass(slots=True)
class LimitMeter:
    """The in-process twin of the admission and settlement scripts, for one tenant or key."""

    accepted: deque[float] = field(default_factory=deque)
    buckets: dict[int, int] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    reserved_nano: int = 0
    spend_nano: dict[str, int] = field(default_factory=dict)

    def check(
        self, limits: MeteredLimits, now: float, window_s: float, tokens: int,
        key: str | None = None,
    ) -> GatewayError | None:
        """The first limit that refuses ``tokens`` now (in the scripts' order), or ``None``."""
        self._expire(now, window_s)
        if limits.monthly_budget_usd is not None:
            spent = self.spend_nano.get(month_of(now), 0) + self.reserved_nano
            if spent >= to_nano(limits.monthly_budget_usd):
                return over_budget(key)
        if limits.max_concurrent is not None and len(self.holds) >= limits.max_concurrent:
            return LimitExceeded("concurrency", retry_after=1.0, at=now, key=key)
        rpm = limits.requests_per_minute
        if rpm is not None and len(self.accepted) >= rpm:
            wait = self.accepted[len(self.accepted) - rpm] + window_s - now
            return LimitExceeded("requests", retry_after=wait, at=now, key=key)
        if limits.tokens_per_minute is not None:
            return self._check_tokens(limits.tokens_per_minute, tokens, now, window_s, key)
        return None

    def reserve(
        self, rid: str, now: float, window_s: float, tokens: int, cost_nano: int,
        lease_s: float = LEASE_MAX_S,
    ) -> None:
        """Count the request and hold its tokens and cost until it settles or its lease lapses."""
        current = int(now // (window_s / BUCKETS))
        self.accepted.append(now)
        self.buckets[current] = self.buckets.get(current, 0) + tokens
        self.holds[rid] = Hold(now + lease_s, tokens, current, cost_nano)
        self.reserved_nano += cost_nano

    def settle(
        self, rid: str, now: float, window_s: float, t_end: float, tokens: int, cost_nano: int
    ) -> None:
        """Replace the reservation (if still held) by actual tokens and spend."""
        bucket_s = window_s / BUCKETS
        current = int(now // bucket_s)
        hold = self.holds.pop(rid, None)
        if hold is not None:
            self.reserved_nano -= hold.cost_nano
            if hold.bucket in self.buckets:
                self.buckets[hold.bucket] -= hold.tokens
        done = min(int(t_end // bucket_s), current)
        if done > current - BUCKETS:  # actuals older than the window no longer count
            self.buckets[done] = self.buckets.get(done, 0) + tokens
        month = month_of(t_end)
        self.spend_nano[month] = self.spend_nano.get(month, 0) + cost_nano

    def _check_tokens(
        self, limit: int, tokens: int, now: float, window_s: float, key: str | None
    ) -> GatewayError | None:
        if tokens > limit:
            return too_large(tokens, limit, key)
        used = sum(self.buckets.values())
        if used + tokens <= limit:
            return None
        bucket_s = window_s / BUCKETS
        freed = 0
        for bucket in sorted(self.buckets):
            freed += self.buckets[bucket]
            if used - freed + tokens <= limit:
                wait = (bucket + BUCKETS) * bucket_s - now
                return LimitExceeded("tokens", retry_after=max(wait, 0.0), at=now, key=key)
        # Only outstanding reservations block it: they clear at settlement.
        return LimitExceeded("tokens", retry_after=1.0, at=now, key=key)

    def _expire(self, now: float, window_s: float) -> None:
        while self.accepted and self.accepted[0] <= now - window_s:
            self.accepted.popleft()
        oldest = int(now // (window_s / BUCKETS)) - BUCKETS
        for bucket in [b for b in self.buckets if b <= oldest]:
            del self.buckets[bucket]
        # A lease that lapsed (its holder died) gives back what it reserved.
        for rid in [r for r, h in self.holds.items() if h.deadline <= now]:
            hold = self.holds.pop(rid)
            self.reserved_nano -= hold.cost_nano
            if hold.bucket in self.buckets:
                self.buckets[hold.bucket] -= hold.tokens


@dataclass(frozen=True, slots=True)
class Level:
    """One level a request is admitted at: its tenant's meter, or its key's own."""

    meter: LimitMeter
    limits: MeteredLimits
    key: str | None = None  # how refusals name the key (``Principal.key_label``); None: tenant


def admit(
    levels: Sequence[Level],
    rid: str,
    now: float,
    window_s: float,
    tokens: int,
    cost_nano: int,
    lease_s: float = LEASE_MAX_S,
) -> None:
    """Check every level, then reserve at each; raises the refusal that binds longest (the
    first level's on a tie) without reserving anything anywhere."""
    refusals = [
        refusal
        for level in levels
        if (refusal := level.meter.check(level.limits, now, window_s, tokens, level.key))
    ]
    if refusals:
        raise max(refusals, key=binding)
    for level in levels:
        level.meter.reserve(rid, now, window_s, tokens, cost_nano, lease_s)
