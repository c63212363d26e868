"""Live per-backend measurements and the predictions routing ranks on.

Predictions start from the backend's ``CapacityPrior`` and are corrected by what this replica
measures: TPOT samples rescale the prior's batch curve, the pool view (``routing.pool``) gives the
slots and instances in service, and requests still waiting for a first token put a floor under
the next TTFT.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.base import LoadSnapshot
from gateway.routing.decode import DecodeLine
from gateway.settings import CapacityPrior

Clock = Callable[[], float]

SERVED_HORIZON_S = 30.0  # window of "output tokens per second served"
SLOT_WAIT_FACTOR = 3.0  # a first token this much later than usual waited for a slot
TTFT_CLIP = 4.0  # one cold start must not hide a backend: clip samples at 4x the estimate
RATIO_RANGE = (0.1, 10.0)  # a TPOT sample moves the calibration at most this far
TTFT_MEMORY_S = 15.0  # unrefreshed, a TTFT estimate relaxes to the prior over this time
BATCH_MARK_S = 0.5  # spacing of the batch-size history that TPOT samples are calibrated on
BATCH_HISTORY_S = 900.0  # longest decode the history covers
ENDING_HORIZON_S = 10.0  # window of "answers ending per second" (the rate slots free at)
MIN_ENDINGS = 0.01  # no ending seen: a slot is predicted to free within 1,000 s
CACHED_TTFT_FLOOR = 0.2  # a fully cached prompt still takes this share of a first token


def _ewma(old: float | None, sample: float, alpha: float) -> float:
    return sample if old is None else old + alpha * (sample - old)


def percentile(samples: deque[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``samples`` by nearest rank, or None when empty."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(slots=True)
class BackendStats:
    """What one replica has seen of a backend: latencies, load, errors, throughput."""

    prior: CapacityPrior
    clock: Clock = time.monotonic
    alpha: float = 0.2
    ttft_s: float | None = None  # EWMA of (clipped) time-to-first-token samples
    ttft_at: float = 0.0  # when ``ttft_s`` last took a sample
    tpot_s: float | None = None  # EWMA of measured seconds per output token
    tpot_ratio: float = 1.0  # measured TPOT over the prior's curve at the batch it ran at
    line: DecodeLine = field(init=False)  # TPOT by batch, fitted over many answers: planning
    in_flight: int = 0
    requests: int = 0
    errors: int = 0
    error_rate: float = 0.0
    load: LoadSnapshot | None = None
    slots: float = 0.0  # decode slots in service (all instances), as the pool view counts them
    planned_slots: float = 0.0  # what routing fills before predicting a wait (>= slots)
    instances: float = 1.0  # instances in service, as the pool view counts them
    recent_ttft: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    recent_tpot: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    # starts still awaiting a token: (when, whether every slot was taken at the time)
    _pending: deque[tuple[float, bool]] = field(default_factory=deque)
    start_rate: float = 0.0  # requests sent per second between the last two probes
    _starts: int = 0
    _starts_at: float = 0.0
    _prefilling: int = 0  # of those, the ones that had a slot (their prefill is under way)
    shares_prefill: bool = True  # its instances prefill new requests in turn (not an API)
    upstream_queue: bool = False  # its last probe showed a queue: new requests may wait
    _served: deque[tuple[float, int]] = field(default_factory=deque)
    _served_total: int = 0
    _ends: deque[float] = field(default_factory=deque)  # when recent answers ended
    # The per-instance batch integrated over time, so a TPOT sample is compared with the
    # batch the request actually decoded in, not the one left when it finished.
    _area: float = 0.0
    _area_at: float = 0.0
    _batch: float = 0.0
    _mark_t: list[float] = field(default_factory=list)
    _mark_area: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.line = DecodeLine(self.prior)
        if not self.slots:
            self.slots = float(self.prior.max_concurrency)
        self.planned_slots = max(self.planned_slots, self.slots)
        self._area_at = self.clock()

    def _advance(self) -> None:
        """Close the piece of the batch integral up to now; call around every change."""
        now = self.clock()
        self._area += self._batch * (now - self._area_at)
        self._area_at = now
        self._batch = self._per_instance(min(float(self.concurrency), self.slots))
        if not self._mark_t or now - self._mark_t[-1] >= BATCH_MARK_S:
            self._mark_t.append(now)
            self._mark_area.append(self._area)
            if now - self._mark_t[0] > 2 * BATCH_HISTORY_S:
                cut = bisect.bisect_left(self._mark_t, now - BATCH_HISTORY_S)
                del self._mark_t[:cut], self._mark_area[:cut]

    def mean_batch(self, since_s: float) -> float:
        """Mean per-instance batch over the last ``since_s`` seconds (now's when unknown)."""
        self._advance()
        now = self._area_at
        t0 = now - since_s
        i = bisect.bisect_right(self._mark_t, t0) - 1
        if since_s <= 0 or i < 0:
            return self._batch
        # Between marks the batch is unknown: take the mark's area plus the current slope.
        area0 = self._mark_area[i] + (t0 - self._mark_t[i]) * (
            (self._mark_area[i + 1] - self._mark_area[i])
            / max(1e-9, self._mark_t[i + 1] - self._mark_t[i])
            if i + 1 < len(self._mark_t) else self._batch
        )
        return max(0.0, (self._area - area0) / since_s)

    # -- observations ---------------------------------------------------------------------

    def started(self) -> None:
        """A request was sent."""
        queued = self.upstream_queue or self.concurrency >= self.slots
        self._advance()
        self.in_flight += 1
        self.requests += 1
        self._pending.append((self.clock(), queued))
        self._prefilling += not queued
        self._advance()

    def first_token(self, ttft_s: float) -> bool:
        """The first token of a request arrived after ``ttft_s``.

        True when the request was sent past the slots in service and waited for one: a
        slot count being probed was found full.
        """
        queued = self._pop_pending()  # FIFO is close enough: only the oldest age is read
        self.recent_ttft.append(ttft_s)
        if queued:
            # It waited for a slot: the queue model predicts that wait (and the oldest
            # waiter floors it), so learning it here as well would count it twice.
            return ttft_s > SLOT_WAIT_FACTOR * self.measured_ttft()
        current = self.ttft_s if self.ttft_s is None else self.measured_ttft()
        if current is not None:
            ttft_s = min(ttft_s, current * TTFT_CLIP)
        self.ttft_s = _ewma(current, ttft_s, self.alpha)
        self.ttft_at = self.clock()
        return False

    def failed(self) -> None:
        """A request failed before its first token."""
        self._pop_pending()
        self.finished(ok=False, output_tokens=0, decode_s=0.0)

    def finished(self, *, ok: bool, output_tokens: int, decode_s: float) -> None:
        """A request ended; ``decode_s`` is the time after its first token."""
        batch = self.mean_batch(decode_s)
        self.in_flight = max(0, self.in_flight - 1)
        while len(self._pending) > self.in_flight:  # ended without a first token
            self._pop_pending()
        self.error_rate = _ewma(self.error_rate, 0.0 if ok else 1.0, self.alpha)
        if not ok:
            self.errors += 1
        if output_tokens > 1 and decode_s > 0:
            tpot = decode_s / (output_tokens - 1)
            self.tpot_s = _ewma(self.tpot_s, tpot, self.alpha)
            self.recent_tpot.append(tpot)
            low, high = RATIO_RANGE
            ratio = min(high, max(low, tpot / self._prior_tpot(batch)))
            self.tpot_ratio = _ewma(self.tpot_ratio, ratio, self.alpha)
            self.line.observe(batch, tpot)
        if output_tokens:
            self._ends.append(self.clock())
            self._served.append((self.clock(), output_tokens))
            self._served_total += output_tokens
        self._advance()

    def _pop_pending(self) -> bool:
        """Forget the oldest start awaiting a token; whether it had waited for a slot."""
        if not self._pending:
            return False
        queued = self._pending.popleft()[1]
        self._prefilling -= not queued
        return queued

    def observe_load(self, snapshot: LoadSnapshot) -> None:
        """Take the backend's own load report (its running and waiting counts)."""
        self._advance()
        self.load = snapshot
        now = self.clock()
        if now > self._starts_at:
            self.start_rate = (self.requests - self._starts) / (now - self._starts_at)
        self._starts, self._starts_at = self.requests, now
        self._advance()

    def resize(self, slots: float, planned: float, instances: float) -> None:
        """The slots and instances in service changed (the pool view's count).

        ``planned`` may exceed ``slots`` while the count is unconfirmed: routing fills that
        far before it predicts a wait, but a request sent past ``slots`` may have waited,
        so its TTFT is not learned as the backend's own.
        """
        self._advance()
        self.slots, self.planned_slots, self.instances = slots, planned, instances
        self._advance()

    # -- what has been measured -----------------------------------------------------------

    @property
    def concurrency(self) -> int:
        """Requests on the backend now: ours in flight, or its own count if larger."""
        upstream = 0
        if self.load is not None:
            upstream = (self.load.running or 0) + (self.load.waiting or 0)
        return max(self.in_flight, upstream)

    def output_tokens_per_s(self, horizon_s: float = SERVED_HORIZON_S) -> float:
        """Output tokens per second served over the last ``horizon_s`` seconds."""
        cutoff = self.clock() - horizon_s
        while self._served and self._served[0][0] < cutoff:
            self._served_total -= self._served.popleft()[1]
        return self._served_total / horizon_s

    def ending_rate(self) -> float:
        """Answers ending per second over the last ``ENDING_HORIZON_S`` (slots freeing)."""
        cutoff = self.clock() - ENDING_HORIZON_S
        ends = self._ends
        while ends and ends[0] < cutoff:
            ends.popleft()
        return max(len(ends), MIN_ENDINGS) / ENDING_HORIZON_S

    def waited_s(self, rank: int = 1) -> float:
        """How long the ``rank``-th oldest request still waiting for its first token has
        waited (0 when fewer wait)."""
        pending = self._pending
        return self.clock() - pending[rank - 1][0] if len(pending) >= rank else 0.0

    def measured_ttft(self) -> float:
        """The TTFT estimate, relaxing towards the prior while nothing refreshes it.

        A backend avoided because it looked slow (a cold start, a bad minute) earns a new
        trial instead of being judged on an old figure forever.
        """
        prior = self.prior.ttft_s
        if self.ttft_s is None:
            return prior
        fade = math.exp((self.ttft_at - self.clock()) / TTFT_MEMORY_S)
        return prior + (self.ttft_s - prior) * fade

    def ttft_percentile(self, q: float) -> float | None:
        """Recent TTFT quantile (for health and telemetry, not the request path)."""
        return percentile(self.recent_ttft, q)

    def tpot_percentile(self, q: float) -> float | None:
        """Recent TPOT quantile (for health and telemetry, not the request path)."""
        return percentile(self.recent_tpot, q)

    # -- predictions ----------------------------------------------------------------------

    def predicted_tpot(self, extra: int = 1) -> float:
        """Seconds per output token for a new request, given the batch it joins."""
        return self.tpot_ratio * self._prior_tpot(self._per_instance(self.concurrency + extra))

    def predicted_ttft(
        self, prompt_tokens: int, extra: int = 1, cached_share: float = 0.0
    ) -> float:
        """Seconds to the first token for a new request, including any wait for a slot.

        ``prompt_tokens`` is accepted for models that charge prefill per token; the live
        TTFT estimate already reflects the prompts this backend usually sees. The share of
        the prompt a prefix cache likely holds (``cached_share``) is not prefilled: the time
        of a first token, mostly prefill, shrinks with it (never below ``CACHED_TTFT_FLOOR``
        of itself: scheduling and one decode step remain).
        """
        base = self.measured_ttft() * max(1.0 - cached_share, CACHED_TTFT_FLOOR)
        if self.shares_prefill:
            # Each request still in prefill on an instance goes before this one: a burst
            # sent to one backend is predicted as slow as it will be, not as its average.
            base *= 1.0 + self._prefilling / max(self.instances, 1.0)
        over = self.concurrency + extra - self.planned_slots
        if over > 0:
            # Wait for ``over`` slots to free, counted near the 99th percentile rather
            # than the mean, plus one more: slots free in bursts with gaps between them.
            # They free as fast as answers have been ending here lately, not slots/hold:
            # a batch filled in a rush ends in a rush a whole answer later, and until
            # then almost nothing frees (no recent ending: no wait is predicted short).
            base += (over + 3.0 * math.sqrt(over) + 1.0) / self.ending_rate()
        # A request still waiting says the next one will wait at least as long (cold start,
        # a stalled server, slots overstated and full) before any failure has been counted.
        # Where slots look free on several instances, one waiter may be stuck behind the
        # one full instance while a new request goes to a free one: there it takes waiters
        # at half the instances (each is behind a full one) to say so.
        rank = 1 if over > 0 else max(1, math.ceil(self.instances / 2))
        return max(base, self.waited_s(rank))

    def tpot_at(self, batch: float) -> float:
        """Seconds per output token at a per-instance ``batch``, on the line fitted over many
        answers: what prices and pool sizes are planned on (one slow answer moves nothing)."""
        return self.line.tpot(batch)

    def batch_within(self, tpot_s: float) -> float:
        """The largest per-instance batch whose planned TPOT stays within ``tpot_s``."""
        return self.line.batch_within(tpot_s)

    def _per_instance(self, requests: float) -> float:
        return requests / max(self.instances, 1e-9)

    def _prior_tpot(self, batch: float) -> float:
        """The prior's decode curve: ``tpot_s`` alone, ``max_concurrency / tokens/s`` full."""
        slots = self.prior.max_concurrency
        alone = self.prior.tpot_s
        full = max(alone, slots / self.prior.output_tokens_per_s)
        if slots == 1:
            return full
        # Past the prior's slot count (the real one is larger) the line goes on rising.
        return alone + (full - alone) * (max(batch, 1.0) - 1.0) / (slots - 1)
