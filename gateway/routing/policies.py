"""Routing policies: rank candidate backends by marginal cost, predicted latency, or both.

``cost``: among backends predicted to meet the objectives, the lowest marginal $ per output
token (``routing.pricing``: nothing for a free slot on paid-for capacity); when none meets
them, the lowest predicted end-to-end time. ``latency``: the lowest
predicted end-to-end time (TTFT + TPOT x expected answer length). ``balanced``: among those
meeting the objectives, ``BALANCED_COST_WEIGHT * cost/best_cost + (1 - BALANCED_COST_WEIGHT) *
time/best_time`` (1.0 is a backend best at both). Candidates within ``NEAR_TIE`` of the best
score are broken by power-of-two-choices on the share of slots taken, so replicas do not herd;
when one of them likely holds the prompt's prefix in its cache, by the shortest predicted time
instead (its prefill is shorter: the cache pays until its load outweighs that).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from adapters.base import Backend
from gateway.routing.pool import PoolState
from gateway.routing.pricing import SlotPrice
from gateway.routing.stats import BackendStats

NEAR_TIE = 0.05
HEADROOM = 0.9  # a prediction right at the objective is a coin toss: keep 10% in hand
QUEUE_HEADROOM = 0.5  # ... and half of it when the prediction includes a wait for a slot
BALANCED_COST_WEIGHT = 0.5
POLICIES = ("cost", "latency", "balanced")


@dataclass(frozen=True, slots=True)
class Objectives:
    """A request's latency objectives in seconds (None: no objective)."""

    max_ttft_s: float | None = None
    max_tpot_s: float | None = None

    @property
    def tpot_limit_s(self) -> float | None:
        """The TPOT that capacity is planned for: the objective with headroom kept in hand."""
        return None if self.max_tpot_s is None else self.max_tpot_s * HEADROOM


@dataclass(frozen=True, slots=True)
class Estimate:
    """What routing predicts for one candidate; recorded in the request's span."""

    backend: Backend
    ttft_s: float
    tpot_s: float
    usd_per_output_token: float
    load: int
    queued: bool = False  # past the slots known to be free: it may wait for one
    probing: bool = False  # ... but within an unconfirmed slot count, where none was seen full
    fill: float = 0.0  # share of its slots in service that are taken (ties are broken on it)
    expected_tokens: int = 256  # answer length the end-to-end time is predicted for
    healthy: bool = True  # False: the last probe failed; ranked after every healthy one
    cached_tokens: int = 0  # prompt tokens its prefix cache likely holds (not prefilled)

    @property
    def duration_s(self) -> float:
        """Predicted end-to-end time for this request's expected answer length."""
        return self.ttft_s + self.tpot_s * self.expected_tokens

    def meets(self, objectives: Objectives) -> bool:
        """Whether the prediction is within the request's objectives (with headroom)."""
        ttft = objectives.max_ttft_s
        tpot = objectives.max_tpot_s
        # A predicted wait for a slot is the least certain part of a prediction (slots free
        # in bursts, per instance): planning on one needs twice the margin.
        room = QUEUE_HEADROOM if self.queued else HEADROOM
        return (ttft is None or self.ttft_s <= ttft * room) and (
            tpot is None or self.tpot_s <= tpot * HEADROOM
        )


def estimate(
    backend: Backend,
    price: SlotPrice,
    pool: PoolState,
    stats: BackendStats,
    prompt_tokens: int,
    expected_tokens: int,
    objectives: Objectives,
    *,
    healthy: bool = True,
    cached_tokens: int = 0,
) -> Estimate:
    """The prediction for sending this request to ``backend`` now; ``cached_tokens`` of the
    prompt are likely in its prefix cache, so only the rest is prefilled."""
    prefill = prompt_tokens - cached_tokens
    cached_share = cached_tokens / prompt_tokens if prompt_tokens else 0.0
    return Estimate(
        backend=backend,
        ttft_s=stats.predicted_ttft(prefill, cached_share=cached_share),
        tpot_s=stats.predicted_tpot(),
        usd_per_output_token=price.marginal(
            pool, stats, prefill, expected_tokens, objectives.tpot_limit_s
        ),
        load=stats.concurrency,
        queued=price.hourly and stats.concurrency + 1 > stats.slots,
        probing=price.hourly and stats.slots < stats.concurrency + 1 <= stats.planned_slots,
        fill=stats.concurrency / pool.slots if pool.slots else 0.0,
        expected_tokens=expected_tokens,
        healthy=healthy,
        cached_tokens=cached_tokens,
    )


def _score(policy: str, est: Estimate, best_cost: float, best_time: float) -> float:
    if policy == "latency":
        return est.duration_s
    if policy == "balanced":
        cost = est.usd_per_output_token / best_cost if best_cost > 0 else 0.0
        w = BALANCED_COST_WEIGHT
        return w * cost + (1.0 - w) * est.duration_s / best_time
    return est.usd_per_output_token


def rank(
    policy: str, estimates: Sequence[Estimate], objectives: Objectives, rng: random.Random
) -> list[Estimate]:
    """Candidates best first under ``policy``; the rest stay in order as fallbacks.

    Backends predicted to meet the objectives come first, ranked by the policy; then the
    others, fastest first, so a fallback gets as close to the objectives as it can.
    """
    if len(estimates) < 2:
        return list(estimates)  # nothing to choose between (the common single-backend model)
    pool = [e for e in estimates if e.meets(objectives)]
    if not pool:
        pool, policy = list(estimates), "latency"  # nobody meets them: get as close as we can
    elif not all(e.queued for e in pool):
        # A wait for a slot is the least certain part of any prediction: while someone has
        # a slot known to be free, nobody is planned to queue. Probing a slot count nobody
        # has seen full is not queueing: a prior that understates it would otherwise leave
        # paid-for slots idle while the API is paid per token.
        pool = [e for e in pool if not e.queued or e.probing]
    # Free slots on paid-for capacity cost nothing: weigh the others against the cheapest
    # priced one, so ``balanced`` still tells an API from an elastic pool.
    priced = [e.usd_per_output_token for e in pool if e.usd_per_output_token > 0]
    best_cost = min(priced, default=0.0)
    best_time = min(e.duration_s for e in pool) or 1e-9
    scores = {id(e): _score(policy, e, best_cost, best_time) for e in pool}
    ranked = sorted(pool, key=lambda e: scores[id(e)])
    if len(pool) < len(estimates):
        ranked += sorted((e for e in estimates if id(e) not in scores), key=_duration)
    top = scores[id(ranked[0])]
    tied = [e for e in ranked[: len(pool)] if scores[id(e)] <= top * (1 + NEAR_TIE)]
    if len(tied) > 1 and any(e.cached_tokens for e in tied):
        first = min(tied, key=_duration)
        ranked.remove(first)
        ranked.insert(0, first)
    elif len(tied) > 1:
        a, b = rng.sample(tied, 2)
        first = a if a.fill <= b.fill else b
        ranked.remove(first)
        ranked.insert(0, first)
    return ranked


def _duration(est: Estimate) -> float:
    return est.duration_s
