"""Per-rate figures from a run's outcomes, and the test of whether a rate saturated the endpoint.

A rate saturates the endpoint when requests arrive faster than it answers them, so the
requests outstanding (sent and unanswered, plus any waiting for a ``--max-concurrency`` slot)
grow without bound. A stable endpoint holds about ``rate x latency`` of them (Little's law),
reached within one latency of the start and flat after. ``saturation`` calls a rate saturated
when, over the last half of the run so far, the count (a) rises roughly linearly, at 10% of the
offered rate or faster with R^2 >= 0.8, and (b) ends at more than twice, plus 4, what a stable
endpoint would hold: the rate times one request's service time (the lowest TTFT seen, plus the
mean ``max_tokens`` asked times the median TPOT; queueing shows in TTFT, not TPOT). An endpoint
that sheds load instead of queueing it is saturated as well: 10% or more (and at least 5) of the
requests that ended in that half were refused as overloaded or rate limited (HTTP 429 or 503)
or timed out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from bench.serve.cost import Price, tokens_per_usd, usd_per_mtok
from bench.serve.records import Outcome, RateRun, Sample, Saturation

PERCENTILES = (50, 90, 99)
GROWTH_SHARE = 0.10  # outstanding count rising at >= this share of the offered rate
MIN_R2 = 0.8  # ... roughly linearly
BEYOND = 2.0  # ... and ending past this many times what a stable endpoint holds
BEYOND_FLOOR = 4  # ... plus this many (small counts are noise)
SHED_SHARE = 0.10  # refused or timed out, of the requests that ended in the window
SHED_MIN = 5
SHED_ERRORS = ("http 429", "http 503", "timeout")
MIN_WINDOW_S = 0.5
MIN_SAMPLES = 5


@dataclass(frozen=True, slots=True)
class Objectives:
    """Latency objectives an answer meets to count towards goodput (None: no objective)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None

    def met(self, o: Outcome) -> bool:
        """Whether a complete answer was fast enough."""
        if self.ttft_ms is not None and (o.ttft_s is None or o.ttft_s * 1e3 > self.ttft_ms):
            return False
        tpot = o.tpot_s
        return self.tpot_ms is None or tpot is None or tpot * 1e3 <= self.tpot_ms

    def describe(self) -> str:
        """One line for the report."""
        parts = [f"TTFT <= {self.ttft_ms:g} ms" if self.ttft_ms is not None else "",
                 f"TPOT <= {self.tpot_ms:g} ms" if self.tpot_ms is not None else ""]
        return " and ".join(p for p in parts if p) or "none (every complete answer counts)"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile, linearly interpolated as numpy's default (None if empty)."""
    return float(np.percentile(values, q)) if len(values) else None


# -- saturation -----------------------------------------------------------------------------


def saturation(samples: Sequence[Sample], outcomes: Sequence[Outcome], rate: float,
               now_s: float) -> Saturation | None:
    """Whether the run so far shows more arriving than the endpoint answers (module doc)."""
    since = now_s / 2
    window = [s for s in samples if s.t_s >= since]
    if now_s - since < MIN_WINDOW_S or len(window) < MIN_SAMPLES:
        return None
    return _shedding(outcomes, since, now_s) or _queueing(window, outcomes, rate, now_s)


def _shedding(outcomes: Sequence[Outcome], since: float, now_s: float) -> Saturation | None:
    ended = [o for o in outcomes if o.finished_s is not None and o.finished_s >= since]
    shed = Counter(o.error for o in ended
                   if o.error is not None and o.error.startswith(SHED_ERRORS))
    count = sum(shed.values())
    if count < SHED_MIN or count < SHED_SHARE * len(ended):
        return None
    kinds = ", ".join(f"{k}: {n}" for k, n in shed.most_common())
    return Saturation(now_s, f"{count} of the {len(ended)} requests that ended in the last "
                      f"{now_s - since:.1f} s were refused or timed out ({kinds})")


def service_time_s(outcomes: Sequence[Outcome]) -> float | None:
    """One request's time on an endpoint that is not queueing it: the lowest TTFT plus the mean
    ``max_tokens`` asked (less one) times the median TPOT (None before any answer)."""
    done = [o for o in outcomes if o.ok and o.ttft_s is not None]
    if not done:
        return None
    tpots = [t for o in done if (t := o.tpot_s) is not None]
    if not tpots:
        return min(o.e2e_s for o in done)
    asked = sum(o.asked_tokens for o in outcomes) / len(outcomes)
    tpot = percentile(tpots, 50) or 0.0
    return min(o.ttft_s or 0.0 for o in done) + max(0.0, asked - 1) * tpot


def _queueing(window: Sequence[Sample], outcomes: Sequence[Outcome], rate: float,
              now_s: float) -> Saturation | None:
    service = service_time_s(outcomes)
    if service is None:
        return None  # nothing answered yet: a ramp cannot be told from a queue
    slope, r2 = _fit([s.t_s for s in window], [float(s.outstanding) for s in window])
    stable = rate * service
    end = window[-1].outstanding
    if slope < GROWTH_SHARE * rate or r2 < MIN_R2 or end < BEYOND * stable + BEYOND_FLOOR:
        return None
    return Saturation(now_s, f"requests outstanding rose from {window[0].outstanding} to {end} "
                      f"over the last {window[-1].t_s - window[0].t_s:.1f} s (+{slope:.1f}/s, "
                      f"R^2 {r2:.2f}), {end / max(stable, 1e-9):.1f}x the {stable:.1f} a stable "
                      f"endpoint holds (rate x {service:.2f} s per request)")


def _fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of ``ys`` over ``xs`` and the fit's R^2 (0 for a flat line)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    if sxx == 0 or syy == 0:
        return 0.0, 0.0
    return sxy / sxx, sxy * sxy / (sxx * syy)


# -- per-rate figures -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateFigures:
    """Every figure of one rate: throughput, goodput, latency percentiles (ms), errors by
    type, the per-backend split and the cost, measured (price x run) and metered (gateway)."""

    rate: float
    duration_s: float
    wall_s: float
    scheduled: int
    sent: int
    completed: int
    failed: int
    cancelled: int
    good: int
    request_throughput: float  # answers/s
    output_throughput: float  # output tokens/s
    goodput: float  # answers within the objectives /s
    prompt_tokens: int
    output_tokens: int
    max_outstanding: int
    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    ttft_p99_ms: float | None
    ttft_mean_ms: float | None
    tpot_p50_ms: float | None
    tpot_p90_ms: float | None
    tpot_p99_ms: float | None
    tpot_mean_ms: float | None
    itl_p50_ms: float | None
    itl_p90_ms: float | None
    itl_p99_ms: float | None
    itl_mean_ms: float | None
    e2e_p50_ms: float | None
    e2e_p90_ms: float | None
    e2e_p99_ms: float | None
    e2e_mean_ms: float | None
    measured_usd: float | None
    metered_usd: float | None  # the sum of the gateway's costs, where it reported them
    metered_requests: int
    tokens_per_usd: float | None  # output tokens per measured dollar
    usd_per_mtok_out: float | None  # measured dollars per 1M output tokens
    saturated: bool
    saturation: str | None
    stopped_early: bool
    errors: dict[str, int]
    backends: dict[str, dict[str, float]]  # x-tollgate-backend -> requests, tokens, metered $

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> RateFigures:
        """Read back a row written by ``report.write_json`` (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


def figures(run: RateRun, price: Price, objectives: Objectives) -> RateFigures:
    """The figures of one rate's run."""
    outcomes = run.outcomes
    done = [o for o in outcomes if o.ok]
    cancelled = sum(o.cancelled for o in outcomes)
    out_tokens = sum(o.tokens for o in done)
    prompt_tokens = sum(o.prompt_tokens if o.prompt_tokens is not None else o.input_tokens
                        for o in done)
    good = sum(objectives.met(o) for o in done)
    wall = run.wall_s or math.inf
    measured = price.cost(run.wall_s, prompt_tokens, out_tokens)
    metered = [o.metered_usd for o in done if o.metered_usd is not None]
    latencies = {
        "ttft": [o.ttft_s for o in done if o.ttft_s is not None],
        "tpot": [t for o in done if (t := o.tpot_s) is not None],
        "itl": [x for o in done for x in o.itl_s],
        "e2e": [o.e2e_s for o in done],
    }
    spread: dict[str, Any] = {}
    for name, values in latencies.items():
        ms = [v * 1e3 for v in values]
        for q in PERCENTILES:
            spread[f"{name}_p{q}_ms"] = percentile(ms, q)
        spread[f"{name}_mean_ms"] = sum(ms) / len(ms) if ms else None
    return RateFigures(
        rate=run.rate, duration_s=run.duration_s, wall_s=run.wall_s, scheduled=run.scheduled,
        sent=len(outcomes), completed=len(done),
        failed=sum(o.error is not None and not o.cancelled for o in outcomes),
        cancelled=cancelled, good=good, request_throughput=len(done) / wall,
        output_throughput=out_tokens / wall, goodput=good / wall,
        prompt_tokens=prompt_tokens, output_tokens=out_tokens,
        max_outstanding=max((s.outstanding for s in run.samples), default=0),
        **spread,
        measured_usd=measured, metered_usd=sum(metered) if metered else None,
        metered_requests=len(metered), tokens_per_usd=tokens_per_usd(out_tokens, measured),
        usd_per_mtok_out=usd_per_mtok(measured, out_tokens),
        saturated=run.saturation is not None,
        saturation=run.saturation.reason if run.saturation else None,
        stopped_early=run.stopped_early,
        errors=dict(Counter(o.error for o in outcomes
                            if o.error is not None and not o.cancelled).most_common()),
        backends=_backends(done),
    )


def _backends(done: Sequence[Outcome]) -> dict[str, dict[str, float]]:
    split: dict[str, dict[str, float]] = {}
    for o in done:
        if o.backend is None:
            continue
        row = split.setdefault(o.backend, {"requests": 0, "output_tokens": 0, "metered_usd": 0.0})
        row["requests"] += 1
        row["output_tokens"] += o.tokens
        row["metered_usd"] += o.metered_usd or 0.0
    return split
