"""One simulated run: a policy, a request rate, a workload, the real Router on virtual time.

Requests are routed exactly as serving routes them: ``Router.plan`` ranks the candidates, the
attempt loop falls back on ``Overloaded`` while the retry budget and deadline allow, and the
Router hears every attempt, first token and end. Baselines reorder the same plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from adapters.base import Overloaded, Timeout
from bench.fleet.clock import EventQueue
from bench.fleet.model import Hooks, Model, build
from bench.fleet.workload import SimRequest, arrivals
from gateway.routing.policies import POLICIES, Estimate, Objectives
from gateway.routing.router import Needs, Router
from gateway.settings import Settings

BASELINES = ("round-robin", "least-outstanding", "list-price", "healthy-round-robin",
             "healthy-list-price")
ALL_POLICIES = (*POLICIES, *BASELINES)
AUTOSCALE_INTERVAL_S = 5.0
DRAIN_LIMIT_S = 900.0  # after arrivals stop, follow the measured requests at most this long

Chooser = Callable[[list[Estimate]], list[Estimate]]


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one run measured over its window (arrivals in [warmup, duration])."""

    policy: str
    rate: float
    mixed: bool
    requests: int
    failed: int
    slo_met: int
    cost_usd: float
    output_tokens: float
    good_tokens: float  # output tokens of answers that met both objectives
    ttft_p50_s: float
    ttft_p99_s: float
    share: dict[str, float]  # output tokens by backend, as a share of all
    bursty: bool = False  # arrivals came in bursts (x5 for 30 s in every 120 s)

    @property
    def slo_attainment(self) -> float:
        """Share of requests answered within both objectives."""
        return self.slo_met / self.requests if self.requests else 1.0

    @property
    def usd_per_mtok(self) -> float:
        """Fleet cost per million output tokens."""
        return self.cost_usd / self.output_tokens * 1e6 if self.output_tokens else math.inf

    @property
    def tokens_per_usd(self) -> float:
        """Output tokens delivered per dollar of fleet cost (the figure the bar is judged on)."""
        return self.output_tokens / self.cost_usd if self.cost_usd else 0.0

    @property
    def goodput_per_usd(self) -> float:
        """Output tokens of answers within the objectives per dollar of fleet cost.

        A failed request delivers nothing and costs nothing per token, and a late answer
        counts as delivered: this is the figure that does not flatter either.
        """
        return self.good_tokens / self.cost_usd if self.cost_usd else 0.0


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    values.sort()
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


class Simulation:
    """A fleet, a Router over it, and the request loop; ``run`` returns the window's figures."""

    def __init__(self, settings: Settings, policy: str, *, seed: int = 0) -> None:
        self.settings = settings
        self.policy = policy
        self.events = EventQueue()
        hooks = Hooks(first_token=self._first_token, done=self._done)
        self.models: dict[str, Model] = {
            b.name: build(b, self.events, hooks) for b in settings.backends if b.simulate
        }
        configs = {b.name: b for b in settings.backends}
        self.router = Router(list(self.models.values()), configs, settings.routing,
                             seed=seed, clock=self.events)
        model_id = settings.models[0].id
        self.candidates = self.router.candidates(model_id, Needs(chat=True))
        routing = settings.routing
        self.objectives = Objectives(
            None if routing.max_ttft_ms is None else routing.max_ttft_ms / 1000,
            None if routing.max_tpot_ms is None else routing.max_tpot_ms / 1000,
        )
        self.choose = self._chooser(policy)
        self.deadline_s = max(self.router.timeouts(b.name).first_token_s for b in self.candidates)
        self.requests: list[SimRequest] = []
        self.outstanding = 0
        self._started_at: dict[int, float] = {}

    # -- policies -------------------------------------------------------------------------

    def _chooser(self, policy: str) -> Chooser:
        index = {b.name: i for i, b in enumerate(self.candidates)}
        turn = [0]

        def rotated(est: Estimate) -> int:
            return (index[est.backend.name] - turn[0]) % len(index)

        def round_robin(plan: list[Estimate]) -> list[Estimate]:
            turn[0] += 1
            return sorted(plan, key=rotated)

        def least_outstanding(plan: list[Estimate]) -> list[Estimate]:
            turn[0] += 1
            stats = self.router.stats
            return sorted(plan, key=lambda e: (stats(e.backend.name).in_flight, rotated(e)))

        listed = {b.name: _list_price(b.name, self.settings) for b in self.candidates}

        def list_price(plan: list[Estimate]) -> list[Estimate]:
            return sorted(plan, key=lambda e: listed[e.backend.name])

        baselines: dict[str, Chooser] = {
            "round-robin": round_robin,
            "least-outstanding": least_outstanding,
            "list-price": list_price,
            "healthy-round-robin": _healthy_first(round_robin),
            "healthy-list-price": _healthy_first(list_price),
        }
        return baselines.get(policy, lambda plan: plan)

    # -- the request path -----------------------------------------------------------------

    def _arrive(self, req: SimRequest) -> None:
        self.requests.append(req)
        self.outstanding += 1
        router_policy = self.policy if self.policy in POLICIES else "latency"
        # The client's max_tokens, as serving passes it: the true length is the backend's secret.
        plan = self.router.plan(self.candidates, router_policy, self.objectives,
                                req.prompt_tokens, req.max_tokens)
        deadline = req.arrival + self.deadline_s  # as serving sets it: the longest wait
        for attempt, est in enumerate(self.choose(plan)):
            name = est.backend.name
            if attempt and (not self.router.may_retry() or self.events.now >= deadline):
                break
            if attempt >= self.settings.routing.max_attempts:
                break
            limit = self.events.now + self.router.timeouts(name).first_token_s
            self.router.attempt_started(name, retry=attempt > 0)
            req.attempts += 1
            self._started_at[id(req)] = self.events.now
            if self.models[name].submit(req):
                req.backend = name
                self.events.at(limit, partial(self._deadline, req))
                return
            self.router.attempt_failed(name, Overloaded("full", backend=name, retry_after=1.0))
        self._fail(req)

    def _deadline(self, req: SimRequest) -> None:
        if req.first_at is None and not req.started and not req.failed:
            self.router.attempt_failed(req.backend, Timeout("no first token", backend=req.backend))
            self._fail(req)

    def _fail(self, req: SimRequest) -> None:
        req.failed = True
        self.outstanding -= 1

    def _first_token(self, req: SimRequest) -> None:
        req.first_at = self.events.now
        self.router.first_token(req.backend, self.events.now - self._started_at[id(req)])

    def _done(self, req: SimRequest) -> None:
        req.done_at = self.events.now
        self.outstanding -= 1
        del self._started_at[id(req)]
        assert req.first_at is not None
        self.router.finished(req.backend, ok=True, output_tokens=req.output_tokens,
                             decode_s=req.done_at - req.first_at)

    # -- periodic work --------------------------------------------------------------------

    def _probe(self) -> None:
        for name, model in self.models.items():
            if model.config.pool.discovery:
                self.router.observe_instances(name, *model.endpoints())
            self.router.observe_load(name, model.snapshot())
        self.events.at(self.events.now + self.settings.routing.probe_interval_s, self._probe)

    def _autoscale(self) -> None:
        for name, model in self.models.items():
            model.autoscale(self.router.desired_instances(name))
        self.events.at(self.events.now + AUTOSCALE_INTERVAL_S, self._autoscale)

    # -- one run --------------------------------------------------------------------------

    def run(self, rate: float, *, duration_s: float, warmup_s: float, mixed: bool,
            seed: int = 0, bursty: bool = False) -> RunResult:
        """Offer ``rate`` requests/s for ``duration_s``; measure from ``warmup_s`` on."""
        source = arrivals(rate, duration_s, mixed=mixed, seed=seed, bursty=bursty)

        def next_arrival() -> None:
            req = next(source, None)
            if req is not None:
                self.events.at(req.arrival, lambda: arrive(req))

        def arrive(req: SimRequest) -> None:
            self._arrive(req)
            next_arrival()

        next_arrival()
        self.events.at(0.0, self._probe)
        self.events.at(0.0, self._autoscale)
        self.events.run(duration_s)
        self.events.run(duration_s + DRAIN_LIMIT_S, stop=lambda: self.outstanding <= 0)
        return self._measure(rate, mixed, bursty, warmup_s, duration_s)

    def _measure(self, rate: float, mixed: bool, bursty: bool, start: float, end: float
                 ) -> RunResult:
        ttft_max = self.objectives.max_ttft_s or math.inf
        tpot_max = self.objectives.max_tpot_s or math.inf
        tokens: dict[str, float] = dict.fromkeys(self.models, 0.0)
        good = 0.0
        # The whole fleet's bill over the window, all of it by time: reserved and autoscaled
        # instance time (booting and idle included) and per-token spend on the tokens decoded
        # in the window (prompts when their first token is in it), whichever request they are
        # for. It is set against the output tokens of the requests that arrived in the window,
        # a count no policy's pace can move: so the oracle, which buys the window's capacity
        # by time too, bounds it exactly where only sunk capacity is needed.
        cost = sum(m.cost(start, end) for m in self.models.values())
        cost += sum(self._per_token_cost(req, start, end) for req in self.requests)
        measured, failed, met, ttfts = 0, 0, 0, []
        for req in self.requests:
            if not start <= req.arrival < end:
                continue
            measured += 1
            ttft, tpot = req.ttft_s, req.tpot_s
            if req.failed or ttft is None or tpot is None:
                failed += 1
                continue
            tokens[req.backend] += req.output_tokens
            ttfts.append(ttft)
            if ttft <= ttft_max and tpot <= tpot_max:
                met += 1
                good += req.output_tokens
        total = sum(tokens.values())
        return RunResult(
            policy=self.policy, rate=rate, mixed=mixed, requests=measured, failed=failed,
            slo_met=met, cost_usd=cost, output_tokens=total, good_tokens=good,
            ttft_p50_s=_quantile(ttfts, 0.5), ttft_p99_s=_quantile(ttfts, 0.99),
            share={k: v / total if total else 0.0 for k, v in tokens.items()}, bursty=bursty,
        )

    def _per_token_cost(self, req: SimRequest, start: float, end: float) -> float:
        if req.first_at is None:
            return 0.0
        price = self.models[req.backend].config.price
        if price.usd_per_hour is not None:
            return 0.0
        done = req.done_at if req.done_at is not None else self.events.now
        share = _overlap(req.first_at, done, start, end)
        out = (price.usd_per_mtok_output or 0.0) * req.output_tokens * share
        inp = (price.usd_per_mtok_input or 0.0) * req.prompt_tokens * (start <= req.first_at < end)
        return (out + inp) / 1e6


def _overlap(a: float, b: float, start: float, end: float) -> float:
    """Share of [a, b] inside [start, end) (a point counts when inside)."""
    if b <= a:
        return 1.0 if start <= a < end else 0.0
    return max(0.0, min(b, end) - max(a, start)) / (b - a)


def _healthy_first(order: Chooser) -> Chooser:
    """A baseline that skips what the gateway knows is down.

    The plan already leaves out backends whose breaker is open; this also skips those whose
    last probe failed, trying them only after every healthy one (as the Router does), so a
    pool scaled to zero is still reached when nothing else takes the request.
    """

    def choose(plan: list[Estimate]) -> list[Estimate]:
        ordered = order(plan)
        return [e for e in ordered if e.healthy] + [e for e in ordered if not e.healthy]

    return choose


def _list_price(name: str, settings: Settings) -> float:
    """The static $/1M tokens a peer gateway would be configured with."""
    config = next(b for b in settings.backends if b.name == name)
    if config.simulate is not None and config.simulate.list_price_usd_per_mtok is not None:
        return config.simulate.list_price_usd_per_mtok
    return (config.price.usd_per_mtok_output or 0.0) + (config.price.usd_per_mtok_input or 0.0)


def simulate(settings: Settings, policy: str, rate: float, *, duration_s: float,
             warmup_s: float, mixed: bool, seed: int = 0, bursty: bool = False) -> RunResult:
    """One run on a fresh fleet."""
    return Simulation(settings, policy, seed=seed).run(
        rate, duration_s=duration_s, warmup_s=warmup_s, mixed=mixed, seed=seed, bursty=bursty
    )


def sweep(settings: Settings, policies: Sequence[str], rates: Sequence[float], *,
          duration_s: float, warmup_s: float, mixed: bool, seed: int = 0,
          bursty: bool = False) -> list[RunResult]:
    """Every policy at every rate (same arrivals for every policy at a rate)."""
    return [simulate(settings, p, r, duration_s=duration_s, warmup_s=warmup_s, mixed=mixed,
                     seed=seed, bursty=bursty) for r in rates for p in policies]
