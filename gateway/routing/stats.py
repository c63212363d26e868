"""Live per-backend measurements and the predictions routing ranks on."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from adapters.base import LoadSnapshot
from gateway.settings import CapacityPrior


def _ewma(old: float | None, sample: float, alpha: float) -> float:
    return sample if old is None else old + alpha * (sample - old)


@dataclass(slots=True)
class BackendStats:
    """What one replica has seen of a backend: latencies, load, errors, throughput."""

    prior: CapacityPrior
    alpha: float = 0.2
    ttft_s: float | None = None
    tpot_s: float | None = None
    in_flight: int = 0
    requests: int = 0
    errors: int = 0
    error_rate: float = 0.0
    load: LoadSnapshot | None = None
    recent_ttft: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    recent_tpot: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    _served: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))

    def started(self) -> None:
        """A request was sent."""
        self.in_flight += 1
        self.requests += 1

    def first_token(self, ttft_s: float) -> None:
        """The first token of a request arrived after ``ttft_s``."""
        self.ttft_s = _ewma(self.ttft_s, ttft_s, self.alpha)
        self.recent_ttft.append(ttft_s)

    def finished(self, *, ok: bool, output_tokens: int, decode_s: float) -> None:
        """A request ended; ``decode_s`` is the time after its first token."""
        self.in_flight = max(0, self.in_flight - 1)
        self.error_rate = _ewma(self.error_rate, 0.0 if ok else 1.0, self.alpha)
        if not ok:
            self.errors += 1
        if output_tokens > 1 and decode_s > 0:
            tpot = decode_s / (output_tokens - 1)
            self.tpot_s = _ewma(self.tpot_s, tpot, self.alpha)
            self.recent_tpot.append(tpot)
        if output_tokens:
            self._served.append((time.monotonic(), output_tokens))

    def output_tokens_per_s(self, horizon_s: float = 30.0) -> float:
        """Output tokens per second served over the last ``horizon_s`` seconds."""
        cutoff = time.monotonic() - horizon_s
        while self._served and self._served[0][0] < cutoff:
            self._served.popleft()
        return sum(n for _, n in self._served) / horizon_s

    @property
    def concurrency(self) -> int:
        """Requests on the backend now: ours in flight, or its own count if larger."""
        upstream = 0
        if self.load is not None:
            upstream = (self.load.running or 0) + (self.load.waiting or 0)
        return max(self.in_flight, upstream)

    def predicted_tpot(self, extra: int = 1) -> float:
        """Seconds per output token for a new request, given the load it joins."""
        base = self.tpot_s if self.tpot_s is not None else self.prior.tpot_s
        # Decode steps slow as the batch fills; past the backend's concurrency they queue.
        load = self.concurrency + extra
        over = max(0, load - self.prior.max_concurrency) / self.prior.max_concurrency
        return base * (1.0 + over)

    def predicted_ttft(self, prompt_tokens: int, extra: int = 1) -> float:
        """Seconds to the first token for a new request, including any queueing."""
        base = self.ttft_s if self.ttft_s is not None else self.prior.ttft_s
        waiting = self.load.waiting if self.load is not None and self.load.waiting else 0
        load = self.concurrency + extra
        queued = max(waiting, load - self.prior.max_concurrency)
        return base + queued * base

    def sustained_tokens_per_s(self, extra: int = 1) -> float:
        """Output tokens/s the backend sustains at its current load plus ``extra`` requests."""
        streams = min(self.concurrency + extra, self.prior.max_concurrency)
        measured = streams / self.predicted_tpot(extra)
        return min(measured, self.prior.output_tokens_per_s * 4)
