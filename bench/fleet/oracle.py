"""The oracle: an offline upper bound on a fleet's output tokens per dollar at a rate and workload.

It knows what no router does (every arrival, every true length, each backend's ``simulate``
truth) and buys the cheapest capacity that serves the offered output tokens within the
objectives, as a mixed-integer program over short time slices of the measured window:

- Demand: each request's output tokens spread evenly from its arrival over the longest decode
  the TPOT objective allows ((length - 1) x max_tpot), the smoothest a compliant policy can make
  it. The program pays for the demand that falls in the measured window; the tokens it earns
  are, as the simulator counts them, every output token of the requests arriving in the window.
- Reserved instances and elastic warm floors are paid all the window whether used or not (sunk);
  their capacity is free to use.
- One instance of a pool sustains, within the objectives, its largest batch ``b`` whose decode
  step plus the prefill stalls at that load (``b`` x mean prompt / (mean answer x prefill
  tokens/s) per step) stays within max_tpot: ``b / that time`` output tokens/s. TTFT queueing,
  admission overheads and per-prompt TTFT limits are left out (they only lower capacity).
- Elastic instances come in whole numbers per slice (0..max_instances), paid per slice while up;
  an instance ready in a slice was paid through its boot (``scale_up_s``) before, inside the
  window, and none beyond the warm floor is ready before ``scale_up_s`` from the start. Scaling
  down is instant (no stabilisation tail is charged), which only lowers the oracle's cost.
- A per-token API costs its output price plus its input price for the mean prompt per answer;
  a backend whose batch-1 TPOT (or an API whose TTFT) misses an objective takes no demand.
- ``bound(attainment)``: a policy that met the objectives for only that share of requests may
  have dropped or stretched the others; the longest ``(1 - attainment)`` of the window's
  requests then count as delivered for free. A policy can beat the oracle only where these
  relaxations are wrong; the bench checks that none does.
- Steady state at the window's edges: the window's tokens are counted by arrival and its costs
  by time, which agree only when the fleet runs alike on both sides of its start. A window that
  opens while pools are still booting or being scaled up (warmup shorter than the autoscaler
  needs) lets a policy that served the warmup on the fast API, and the window on slower pools,
  push decoding past the window's end unpaid, and beat this bound (by up to 10% seen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp  # type: ignore[import-untyped]
from scipy.sparse import coo_matrix  # type: ignore[import-untyped]

from bench.fleet.model import step_table
from bench.fleet.workload import arrivals
from gateway.settings import BackendSettings, Settings

SLICE_S = 5.0  # the program's time step (longer windows get longer slices, at most MAX_SLICES)
MAX_SLICES = 72
ATTAINMENT_STEPS = (1.0, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.5, 0.0)
UNSERVED_USD_PER_TOKEN = 1.0  # a token no backend can serve within the objectives
SOLVER_TIME_S = 2.0  # past it, the proven lower bound on cost is used
MIP_GAP = 2e-3
KTOK = 1000.0  # the program counts tokens in thousands (keeps its coefficients well scaled)


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one backend offers the oracle within the objectives, from its ``simulate`` truth."""

    name: str
    tokens_per_s: float  # one instance within the objectives; 0: it cannot meet them
    batch: int  # the batch that sustains it (0 for an API)
    usd_per_s: float = 0.0  # one instance, while up
    usd_per_token: float = 0.0  # a per-token API: $ per output token, its prompt included
    sunk: int = 0  # instances paid whether used or not
    ceiling: int = 0
    boot_s: float = 0.0

    @property
    def elastic(self) -> bool:
        """Whether instances beyond the sunk ones can be bought."""
        return self.ceiling > self.sunk

    @property
    def api(self) -> bool:
        """Whether it is paid per token."""
        return self.usd_per_s == 0.0 and self.ceiling == 0


def capacity(config: BackendSettings, max_ttft_s: float | None, max_tpot_s: float | None,
             mean_prompt: float, mean_output: float) -> Capacity:
    """One backend's best SLO-feasible offer for a workload of these mean lengths."""
    sim = config.simulate
    assert sim is not None
    price = config.price
    if price.usd_per_hour is None:  # a per-token API: one request at a time per "slot"
        tpot = step_table(sim.decode_step_s, 1)[1]
        ttft = sim.ttft_overhead_s + mean_prompt / sim.prefill_tokens_per_s
        meets = (max_tpot_s is None or tpot <= max_tpot_s) and (
            max_ttft_s is None or ttft <= max_ttft_s)
        per_token = ((price.usd_per_mtok_output or 0.0)
                     + (price.usd_per_mtok_input or 0.0) * mean_prompt / mean_output) / 1e6
        return Capacity(config.name, math.inf if meets else 0.0, 0, usd_per_token=per_token)
    steps = step_table(sim.decode_step_s, sim.slots)
    stall = mean_prompt / (mean_output * sim.prefill_tokens_per_s)  # per request in the batch
    best, batch = 0.0, 0
    for b in range(1, sim.slots + 1):
        tpot = steps[b] + b * stall
        if max_tpot_s is not None and tpot > max_tpot_s:
            continue
        if b / tpot > best:
            best, batch = b / tpot, b
    pool = config.pool
    return Capacity(config.name, best, batch, usd_per_s=price.usd_per_hour / 3600,
                    sunk=pool.sunk_instances, ceiling=pool.ceiling,
                    boot_s=pool.scale_up_s if pool.billing == "elastic" else 0.0)


@dataclass(frozen=True, slots=True)
class Bound:
    """The oracle's answer for one attainment: tokens, their cheapest cost, where they went."""

    attainment: float
    tokens: float  # output tokens of the window's requests (free ones included)
    cost_usd: float  # a lower bound on what serving the required ones costs
    feasible: bool  # the required tokens fit the fleet's capacity within the objectives
    share: dict[str, float] = field(default_factory=dict)  # output tokens by backend

    @property
    def tokens_per_usd(self) -> float:
        """The ceiling on output tokens per dollar."""
        return self.tokens / self.cost_usd if self.cost_usd > 0 else math.inf


def attainment_step(attainment: float) -> float:
    """The largest step of ``ATTAINMENT_STEPS`` not above ``attainment`` (bounds stay valid)."""
    return next(s for s in ATTAINMENT_STEPS if s <= attainment + 1e-12)


class Oracle:
    """The bound for one fleet, rate and workload; ``bound`` is solved once per attainment step."""

    def __init__(self, settings: Settings, rate: float, *, duration_s: float, warmup_s: float,
                 mixed: bool, bursty: bool = False, seed: int = 0) -> None:
        routing = settings.routing
        self.max_ttft_s = None if routing.max_ttft_ms is None else routing.max_ttft_ms / 1000
        self.max_tpot_s = None if routing.max_tpot_ms is None else routing.max_tpot_ms / 1000
        reqs = list(arrivals(rate, duration_s, mixed=mixed, seed=seed, bursty=bursty))
        self.arrival = np.array([r.arrival for r in reqs])
        self.output = np.array([r.output_tokens for r in reqs], dtype=float)
        prompt = np.array([r.prompt_tokens for r in reqs], dtype=float)
        mean_prompt = float(prompt.mean()) if reqs else 1.0
        mean_output = float(self.output.mean()) if reqs else 1.0
        self.backends = [
            capacity(b, self.max_ttft_s, self.max_tpot_s, mean_prompt, mean_output)
            for b in settings.backends if b.simulate is not None
        ]
        self.start, self.end = warmup_s, duration_s
        window = max(1e-9, duration_s - warmup_s)
        self.slices = max(1, min(MAX_SLICES, math.ceil(window / SLICE_S)))
        self.slice_s = window / self.slices
        sims = [b.simulate for b in settings.backends if b.simulate is not None]
        pace = self.max_tpot_s or max(step_table(x.decode_step_s, x.slots)[-1] for x in sims)
        self.decode_s = np.maximum(self.output - 1, 1) * pace
        self._bounds: dict[float, Bound] = {}

    def bound(self, attainment: float = 1.0) -> Bound:
        """The ceiling for a policy that met the objectives for ``attainment`` of requests."""
        step = attainment_step(attainment)
        if step not in self._bounds:
            self._bounds[step] = self._solve(step)
        return self._bounds[step]

    # -- demand -----------------------------------------------------------------------------

    def _profile(self, mask: np.ndarray) -> np.ndarray:
        """Output tokens/s in each slice from the requests in ``mask``."""
        edges = self.start + self.slice_s * np.arange(self.slices + 1)
        a, d, n = self.arrival[mask], self.decode_s[mask], self.output[mask]
        delivered = np.zeros(self.slices + 1)
        for i, t in enumerate(edges):  # tokens each request delivered by edge t, summed
            delivered[i] = float(np.sum(n * np.clip((t - a) / d, 0.0, 1.0)))
        return np.diff(delivered) / self.slice_s

    def _measured(self) -> np.ndarray:
        """The requests the simulator measures: those arriving in the window."""
        return (self.arrival >= self.start) & (self.arrival < self.end)

    def _required(self, step: float) -> np.ndarray:
        """Requests that must be served: all but the longest (1 - step) of the window's."""
        mask = np.ones(len(self.arrival), dtype=bool)
        measured = np.flatnonzero(self._measured())
        free = math.floor((1.0 - step) * len(measured) + 1e-9)
        if free:
            longest = measured[np.argsort(-self.output[measured], kind="stable")[:free]]
            mask[longest] = False
        return mask

    # -- the program ------------------------------------------------------------------------

    def _solve(self, step: float) -> Bound:
        tokens = float(self.output[self._measured()].sum())
        if step <= 0.0:
            return Bound(step, tokens, 0.0, True)
        demand = self._profile(self._required(step))
        window = self.end - self.start
        sunk_usd = sum(b.sunk * b.usd_per_s for b in self.backends) * window
        free_tps = sum(b.sunk * b.tokens_per_s for b in self.backends if not b.api)
        residual = np.maximum(0.0, demand - free_tps)
        pools = [b for b in self.backends if b.elastic and b.tokens_per_s > 0]
        api = min((b for b in self.backends if b.api and b.tokens_per_s > 0),
                  key=lambda b: b.usd_per_token, default=None)
        if not residual.any():
            return Bound(step, tokens, sunk_usd, True, self._share(demand, pools, None, None))
        units, extra_usd, unserved = self._program(residual, pools, api)
        share = self._share(demand, pools, units, api)
        feasible = unserved <= 1e-6 * max(1.0, float(residual.sum()))
        return Bound(step, tokens, sunk_usd + extra_usd, feasible, share)

    def _program(self, residual: np.ndarray, pools: list[Capacity], api: Capacity | None
                 ) -> tuple[np.ndarray, float, float]:
        """Whole extra instances per pool and slice; API and unserved tokens/s per slice.

        Returns the instances up (pools x slices, beyond the sunk ones), a lower bound on the
        extra dollars, and the unserved token-seconds.
        """
        n, k, dt = len(pools), self.slices, self.slice_s
        # Variables: up[p, s] (whole extra instances ready in slice s), started[p, s] (how many
        # became ready at the start of slice s, each paid through its boot before), then
        # api[s] and unserved[s] in thousands of tokens/s.
        up = lambda p, s: p * k + s  # noqa: E731
        started = lambda p, s: (n + p) * k + s  # noqa: E731
        api_at = lambda s: 2 * n * k + s  # noqa: E731
        lost_at = lambda s: 2 * n * k + k + s  # noqa: E731
        size = 2 * n * k + 2 * k
        cost = np.zeros(size)
        upper = np.full(size, np.inf)
        integral = np.zeros(size)
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        low: list[float] = []

        def at_least(entries: list[tuple[int, float]], bound: float) -> None:
            for c, v in entries:
                rows.append(len(low))
                cols.append(c)
                vals.append(v)
            low.append(bound)

        for p, pool in enumerate(pools):
            earliest = pool.boot_s - self.start  # no extra instance is ready before its boot
            for s in range(k):
                integral[up(p, s)] = 1
                upper[up(p, s)] = 0 if (s + 1) * dt <= earliest else pool.ceiling - pool.sunk
                cost[up(p, s)] = pool.usd_per_s * dt
                if s == 0:  # those ready as the window opens booted before it: free here
                    upper[started(p, s)] = 0
                    continue
                # Its boot, paid while it serves nothing, as far as it lies in the window.
                cost[started(p, s)] = pool.usd_per_s * min(pool.boot_s, s * dt)
                at_least([(started(p, s), 1.0), (up(p, s), -1.0), (up(p, s - 1), 1.0)], 0.0)
        for s in range(k):
            cost[api_at(s)] = (api.usd_per_token * KTOK * dt) if api is not None else 0.0
            upper[api_at(s)] = np.inf if api is not None else 0.0
            cost[lost_at(s)] = UNSERVED_USD_PER_TOKEN * KTOK * dt
            cover = [(up(p, s), pool.tokens_per_s / KTOK) for p, pool in enumerate(pools)]
            at_least([*cover, (api_at(s), 1.0), (lost_at(s), 1.0)], residual[s] / KTOK)
        matrix = coo_matrix((vals, (rows, cols)), shape=(len(low), size)).tocsr()
        limits = LinearConstraint(matrix, np.array(low), np.full(len(low), np.inf))
        box = Bounds(np.zeros(size), upper)
        result = milp(cost, integrality=integral, bounds=box, constraints=limits,
                      options={"time_limit": SOLVER_TIME_S, "mip_rel_gap": MIP_GAP})
        if result.x is None:  # out of time without a plan: the relaxation is a bound too
            result = milp(cost, bounds=box, constraints=limits)
        x = result.x
        lost = float(sum(x[lost_at(s)] for s in range(k)) * KTOK * dt)
        # The solver's proven lower bound on the optimum, less what the shortfall was charged.
        proven = getattr(result, "mip_dual_bound", None)
        floor = result.fun if proven is None or not math.isfinite(proven) else min(
            result.fun, proven)
        units = np.array([[x[up(p, s)] for s in range(k)] for p in range(n)]).reshape(n, k)
        return units, max(0.0, floor - lost * UNSERVED_USD_PER_TOKEN), lost

    def _share(self, demand: np.ndarray, pools: list[Capacity], units: np.ndarray | None,
               api: Capacity | None) -> dict[str, float]:
        """Output tokens by backend under the program's plan: sunk first, then bought, then API."""
        tokens = dict.fromkeys((b.name for b in self.backends), 0.0)
        sunk = [b for b in self.backends if b.sunk and b.tokens_per_s > 0 and not b.api]
        sunk.sort(key=lambda b: b.usd_per_s / b.tokens_per_s)
        bought = sorted(range(len(pools)), key=lambda p: pools[p].usd_per_s / pools[p].tokens_per_s)
        for s, need in enumerate(demand):
            for b in sunk:
                take = min(need, b.sunk * b.tokens_per_s)
                tokens[b.name] += take
                need -= take
            for p in bought if units is not None else ():
                assert units is not None
                take = min(need, float(units[p, s]) * pools[p].tokens_per_s)
                tokens[pools[p].name] += take
                need -= take
            if api is not None and need > 0:
                tokens[api.name] += need
        total = sum(tokens.values())
        return {k: v / total for k, v in tokens.items() if total and v > 0}
