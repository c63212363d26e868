"""Requests arriving at a rate: Poisson or bursty arrivals, lengths around 1,024 tokens or mixed.

Each request carries what a client would send as ``max_tokens`` (a round cap, or the answer's
power-of-two ceiling), never its true length: the Router plans on the cap, as serving does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

MAX_TOKENS = 4096
# What clients put in max_tokens, by share of requests: most a round cap well above the
# answer, some the answer's power-of-two ceiling (None), as a client that knows its lengths.
CLIENT_CAPS: tuple[tuple[float, int | None], ...] = (
    (0.15, 1024), (0.30, 2048), (0.30, 4096), (0.25, None),
)
BURST_FACTOR = 5.0  # arrival rate inside a burst, times the nominal rate
BURST_S = 30.0
BURST_PERIOD_S = 120.0  # one burst per period, at a seeded offset within it


@dataclass(slots=True)
class SimRequest:
    """One request as the simulator follows it through routing and serving."""

    arrival: float
    prompt_tokens: int
    output_tokens: int  # the true answer length: what the backend will generate
    max_tokens: int = MAX_TOKENS  # what the client asked for: all the Router is told
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


def client_cap(rng: random.Random, output_tokens: int) -> int:
    """The ``max_tokens`` a client sends for an answer that will run to ``output_tokens``.

    A cap below the answer would have cut it short; clients that saw that raised theirs, so
    the cap doubles until the answer fits.
    """
    draw, cap = rng.random(), None
    for share, value in CLIENT_CAPS:
        cap = value
        if draw < share:
            break
        draw -= share
    ceiling = 1 << max(0, output_tokens - 1).bit_length()
    if cap is None:
        return ceiling
    while cap < output_tokens:
        cap *= 2
    return cap


def burst_offset(seed: int) -> float:
    """Where in each period its burst starts (seconds), drawn from ``seed``."""
    return random.Random(f"bursts-{seed}").uniform(0.0, BURST_PERIOD_S - BURST_S)


def in_burst(t: float, offset: float) -> bool:
    """Whether time ``t`` falls in a burst of the schedule starting at ``offset``."""
    return 0.0 <= (t - offset) % BURST_PERIOD_S < BURST_S


def bursts(duration_s: float, seed: int) -> list[tuple[float, float]]:
    """The bursts of a bursty run over ``duration_s``: (start, end) seconds."""
    offset, spans = burst_offset(seed), []
    start = offset
    while start < duration_s:
        spans.append((start, min(duration_s, start + BURST_S)))
        start += BURST_PERIOD_S
    return spans


def _next_change(t: float, offset: float) -> float:
    """The first time the bursty rate changes strictly after ``t``."""
    base = offset + math.floor((t - offset) / BURST_PERIOD_S) * BURST_PERIOD_S
    return min(c for c in (base + BURST_S, base + BURST_PERIOD_S, base + BURST_PERIOD_S + BURST_S)
               if c > t + 1e-9)


def _arrival_times(rng: random.Random, rate: float, duration_s: float, bursty: bool,
                   offset: float) -> Iterator[float]:
    if not bursty:
        t = rng.expovariate(rate)
        while t < duration_s:
            yield t
            t += rng.expovariate(rate)
        return
    # Piecewise-constant rate: exponential gaps are memoryless, so a gap that crosses a
    # change of rate is drawn again from the change at the new rate.
    t = 0.0
    while t < duration_s:
        change = _next_change(t, offset)
        # The rate of the span up to the next change, read at its middle (no edge rounding).
        now_rate = rate * (BURST_FACTOR if in_burst((t + change) / 2, offset) else 1.0)
        gap = rng.expovariate(now_rate)
        if t + gap >= change:
            t = change
            continue
        t += gap
        if t < duration_s:
            yield t


def arrivals(rate: float, duration_s: float, *, mixed: bool, seed: int,
             bursty: bool = False) -> Iterator[SimRequest]:
    """Arrivals at ``rate`` per second over ``duration_s`` seconds, all drawn from ``seed``.

    Poisson, or bursty: ``BURST_FACTOR`` x the rate for ``BURST_S`` once per
    ``BURST_PERIOD_S`` (so the mean rate is (1 + (5 - 1) x 30/120) = 2x the nominal one).
    """
    rng = random.Random(seed)
    caps = random.Random(f"caps-{seed}")  # its own stream: arrivals stay as they always were
    for t in _arrival_times(rng, rate, duration_s, bursty, burst_offset(seed)):
        prompt, output = _length(rng, mixed), _length(rng, mixed)
        yield SimRequest(t, prompt, output, client_cap(caps, output))
