"""Requests arriving at a rate: Poisson arrivals, lengths around 1,024 tokens or mixed."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

MAX_TOKENS = 4096


@dataclass(slots=True)
class SimRequest:
    """One request as the simulator follows it through routing and serving."""

    arrival: float
    prompt_tokens: int
    output_tokens: int
    backend: str = ""
    attempts: int = 0
    first_at: float | None = None
    done_at: float | None = None
    enqueued_at: float = 0.0
    started: bool = False  # holds a decode slot (or its first token is on its way)
    failed: bool = False

    @property
    def ttft_s(self) -> float | None:
        """Seconds from arrival to the first token."""
        return None if self.first_at is None else self.first_at - self.arrival

    @property
    def tpot_s(self) -> float | None:
        """Mean seconds per output token after the first."""
        if self.first_at is None or self.done_at is None:
            return None
        return (self.done_at - self.first_at) / max(1, self.output_tokens - 1)


def _length(rng: random.Random, mixed: bool) -> int:
    if mixed:  # long-tailed, mean about 1,000: chat turns, summaries, long generations
        return max(16, min(MAX_TOKENS, round(rng.lognormvariate(6.55, 0.9))))
    return max(16, round(rng.gauss(1024, 96)))


def arrivals(rate: float, duration_s: float, *, mixed: bool, seed: int) -> Iterator[SimRequest]:
    """Poisson arrivals at ``rate`` per second over ``duration_s`` seconds."""
    rng = random.Random(seed)
    t = rng.expovariate(rate)
    while t < duration_s:
        yield SimRequest(t, _length(rng, mixed), _length(rng, mixed))
        t += rng.expovariate(rate)
