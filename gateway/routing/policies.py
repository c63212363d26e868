"""Routing policies: rank candidate backends by marginal cost, predicted latency, or both.

``cost``: among backends predicted to meet the objectives, lowest marginal $ per output
token (falls back to ``latency`` when none meets them). ``latency``: lowest predicted
end-to-end time. ``balanced``: ``0.5·cost/min_cost + 0.5·time/min_time``. Candidates within
``NEAR_TIE`` of the best are broken by power-of-two-choices on load so replicas do not herd.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from adapters.base import Backend
from gateway.routing.stats import BackendStats
from gateway.settings import Price

NEAR_TIE = 0.05


@dataclass(frozen=True, slots=True)
class Objectives:
    """A request's latency objectives in seconds (None: no objective)."""

    max_ttft_s: float | None = None
    max_tpot_s: float | None = None


@dataclass(frozen=True, slots=True)
class Estimate:
    """What routing predicts for one candidate; recorded in the request's span."""

    backend: Backend
    ttft_s: float
    tpot_s: float
    usd_per_output_token: float
    load: int

    @property
    def duration_s(self) -> float:
        """Predicted end-to-end time for a typical answer length."""
        return self.ttft_s + self.tpot_s * 256

    def meets(self, objectives: Objectives) -> bool:
        """Whether the prediction is within the request's objectives."""
        ttft_ok = objectives.max_ttft_s is None or self.ttft_s <= objectives.max_ttft_s
        tpot_ok = objectives.max_tpot_s is None or self.tpot_s <= objectives.max_tpot_s
        return ttft_ok and tpot_ok


def marginal_cost(price: Price, stats: BackendStats, prompt_tokens: int, max_tokens: int) -> float:
    """Dollars per output token this request would cost on the backend (DESIGN's model)."""
    if price.usd_per_hour is not None:
        return price.usd_per_hour / 3600.0 / stats.sustained_tokens_per_s()
    out = (price.usd_per_mtok_output or 0.0) / 1e6
    inp = (price.usd_per_mtok_input or 0.0) / 1e6
    return out + inp * prompt_tokens / max(1, max_tokens)


def estimate(
    backend: Backend, price: Price, stats: BackendStats, prompt_tokens: int, max_tokens: int
) -> Estimate:
    """The prediction for sending this request to ``backend`` now."""
    return Estimate(
        backend=backend,
        ttft_s=stats.predicted_ttft(prompt_tokens),
        tpot_s=stats.predicted_tpot(),
        usd_per_output_token=marginal_cost(price, stats, prompt_tokens, max_tokens),
        load=stats.concurrency,
    )


def _score(policy: str, est: Estimate, best_cost: float, best_time: float) -> float:
    if policy == "latency":
        return est.duration_s
    if policy == "balanced":
        cost = est.usd_per_output_token / best_cost if best_cost > 0 else 1.0
        return 0.5 * cost + 0.5 * est.duration_s / best_time
    return est.usd_per_output_token


def rank(
    policy: str, estimates: Sequence[Estimate], objectives: Objectives, rng: random.Random
) -> list[Estimate]:
    """Candidates best first under ``policy``; the rest stay as fallbacks."""
    if not estimates:
        return []
    meeting = [e for e in estimates if e.meets(objectives)]
    if policy == "cost" and not meeting:
        policy = "latency"  # nobody can meet the objective: get as close as possible
    pool = meeting or list(estimates)
    best_cost = min(e.usd_per_output_token for e in pool)
    best_time = min(e.duration_s for e in pool) or 1e-9
    scored = sorted(pool, key=lambda e: _score(policy, e, best_cost, best_time))
    scored += sorted((e for e in estimates if e not in pool), key=lambda e: e.duration_s)
    top = _score(policy, scored[0], best_cost, best_time)
    tied = [e for e in scored if _score(policy, e, best_cost, best_time) <= top * (1 + NEAR_TIE)]
    if len(tied) > 1:
        a, b = rng.sample(tied, 2)
        first = a if a.load <= b.load else b
        scored.remove(first)
        scored.insert(0, first)
    return scored
