"""The router: candidates by model and capability, ranked by policy, with health and budget.

Fallback happens in serving, before the first byte, over the ranked list ``plan`` returns;
the router decides whether another attempt is allowed (breakers, retry budget). Every
timestamp comes from the injected ``clock`` so tests and the fleet simulator run on virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from adapters.base import Backend, BackendError, BadRequest, Capabilities, LoadSnapshot, Overloaded
from gateway.errors import InvalidRequest
from gateway.routing.breaker import CircuitBreaker
from gateway.routing.discovery import Discovery, KubernetesDiscovery, discovery_for
from gateway.routing.policies import Estimate, Objectives, estimate, rank
from gateway.routing.pool import PoolState
from gateway.routing.prefixes import PrefixIndex, PromptBlocks
from gateway.routing.pricing import SlotPrice
from gateway.routing.scaling import REACH, ArrivalRate, Offer, allocate
from gateway.routing.stats import BackendStats, Clock
from gateway.settings import BackendSettings, RoutingSettings, TimeoutSettings

log = logging.getLogger("tollgate.routing")

STALE_S = 300.0  # a backend with no answer finished this long is measured again
ANSWER_ALPHA = 0.05  # how fast the expected answer length follows finished answers
UNKNOWN_ANSWER_SHARE = 0.5  # of the cap, an answer's length before any has been seen to end


@dataclass(frozen=True, slots=True)
class Needs:
    """What a request asks of a backend beyond plain text generation."""

    chat: bool = False
    token_prompts: bool = False
    echo: bool = False
    logprobs: int = 0
    seed: bool = False
    logit_bias: bool = False
    penalties: bool = False
    suffix: bool = False
    tools: bool = False
    structured: bool = False

    def unmet(self, caps: Capabilities) -> str | None:
        """The request parameter ``caps`` cannot honour, or None."""
        if self.token_prompts and not caps.token_prompts:
            return "prompt"
        if self.echo and not caps.echo:
            return "echo"
        if self.logprobs > caps.logprobs:
            return "logprobs"
        if self.seed and not caps.seed:
            return "seed"
        if self.logit_bias and not caps.logit_bias:
            return "logit_bias"
        if self.penalties and not caps.penalties:
            return "presence_penalty"
        if self.suffix and not caps.suffix:
            return "suffix"
        if self.tools and not caps.tools:
            return "tools"
        if self.structured and not caps.structured:
            return "response_format"
        return None


@dataclass(slots=True)
class _Member:
    backend: Backend
    config: BackendSettings
    stats: BackendStats
    pool: PoolState
    price: SlotPrice
    breaker: CircuitBreaker
    healthy: bool = False
    probed: bool = False
    measured_at: float | None = None  # when an answer last finished here
    discovery: Discovery | None = None  # where its instances are listed, if configured
    desired: int = 0  # the instance count last exported for its autoscaler

    def sync(self) -> None:
        """Hand the pool view's slot and instance counts to the stats that predict on them."""
        self.stats.resize(self.pool.slots, self.pool.planned_slots, self.pool.ready)


def _member(backend: Backend, config: BackendSettings, settings: RoutingSettings,
            clock: Clock) -> _Member:
    pool = PoolState(config.pool, config.capacity.max_concurrency, kind=backend.kind, clock=clock)
    stats = BackendStats(prior=config.capacity, clock=clock)
    stats.shares_prefill = config.price.usd_per_hour is not None  # an API's requests do not
    member = _Member(
        backend=backend,
        config=config,
        stats=stats,
        pool=pool,
        price=SlotPrice(config.price),
        breaker=CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s),
        discovery=discovery_for(config.pool.discovery) if config.pool.discovery else None,
        desired=config.pool.sunk_instances,
    )
    member.sync()
    return member


class Router:
    """Owns every backend's stats, health and breaker, and ranks them per request."""

    def __init__(
        self,
        backends: Sequence[Backend],
        configs: Mapping[str, BackendSettings],
        settings: RoutingSettings,
        *,
        seed: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock: Callable[[], float] = clock
        self._members = {b.name: _member(b, configs[b.name], settings, clock) for b in backends}
        self._rng = random.Random(seed)
        self._answer_tokens: float | None = None  # EWMA of finished answers' output tokens
        self._prompt_tokens: float | None = None  # EWMA of planned requests' prompt tokens
        # Backends that share a model share its demand: each set is sized together.
        self._groups = {
            frozenset(n for n, m in self._members.items() if model in m.backend.models)
            for b in backends for model in b.models
        }
        self.objectives = Objectives(
            None if settings.max_ttft_ms is None else settings.max_ttft_ms / 1000,
            None if settings.max_tpot_ms is None else settings.max_tpot_ms / 1000,
        )
        # Output tokens planned for the requests arriving, by the candidates planned over.
        self._arrivals: dict[frozenset[str], ArrivalRate] = {}
        self._first_attempts = 0.0
        self._retries = 0.0
        self._prefixes = PrefixIndex(settings.prefix_blocks)
        self._probe_task: asyncio.Task[None] | None = None
        self.became_ready = asyncio.Event()  # set by the first probe round that finds it ready

    @property
    def backends(self) -> list[Backend]:
        """Every configured backend."""
        return [m.backend for m in self._members.values()]

    def stats(self, name: str) -> BackendStats:
        """Live stats of one backend."""
        return self._members[name].stats

    def pool(self, name: str) -> PoolState:
        """The instance view of one backend."""
        return self._members[name].pool

    def timeouts(self, name: str) -> TimeoutSettings:
        """The configured deadlines of one backend."""
        return self._members[name].config.timeouts

    def breaker(self, name: str) -> CircuitBreaker:
        """The circuit breaker of one backend."""
        return self._members[name].breaker

    def candidates(self, model: str, needs: Needs) -> list[Backend]:
        """Backends serving ``model`` that honour ``needs``; 400 naming the parameter if none."""
        serving = [m for m in self._members.values() if model in m.backend.models]
        able = [m.backend for m in serving if needs.unmet(m.backend.capabilities) is None]
        if serving and not able:
            param = next(p for m in serving if (p := needs.unmet(m.backend.capabilities)))
            raise InvalidRequest(
                f"No backend serving '{model}' supports the '{param}' parameter "
                "with the value given.",
                param=param,
            )
        return able

    def expected_tokens(self, max_tokens: int) -> int:
        """The answer length to plan for: what answers here run to, capped by the request's."""
        typical = self._answer_tokens
        return max_tokens if typical is None else max(1, min(max_tokens, round(typical)))

    def plan(
        self,
        candidates: Sequence[Backend],
        policy: str,
        objectives: Objectives,
        prompt_tokens: int,
        max_tokens: int,
        prompt: PromptBlocks | None = None,
    ) -> list[Estimate]:
        """Candidates that may be tried now, best first under ``policy``.

        Backends whose breaker is open or who asked us to back off are left out; those whose
        last probe failed come after every healthy one. The list is what fallback walks. A
        backend with a prefix cache that likely holds the start of ``prompt`` is predicted
        without the prefill of what it holds.
        """
        now = self.clock()
        expected = self.expected_tokens(max_tokens)
        old = self._prompt_tokens
        self._prompt_tokens = (
            prompt_tokens if old is None else old + ANSWER_ALPHA * (prompt_tokens - old)
        )
        key = frozenset(b.name for b in candidates)
        arrivals = self._arrivals.get(key)
        if arrivals is None:
            arrivals = self._arrivals[key] = ArrivalRate()
        # Until an answer has been seen to end, a length is known only to lie under the
        # client's cap: half of it, the mean of a length that could be anything below.
        known = self._answer_tokens is not None
        arrivals.add(now, expected if known else max_tokens * UNKNOWN_ANSWER_SHARE)
        healthy: list[Estimate] = []
        sick: list[Estimate] = []
        for backend in candidates:
            m = self._members[backend.name]
            if not m.breaker.allows(now):
                continue
            ok = m.healthy or not m.probed  # not probed yet: give it the benefit of the doubt
            cached = 0
            if prompt is not None and backend.capabilities.prefix_cache:
                held = self._prefixes.matched(backend.name, prompt)
                cached = prompt.cached_tokens(held, prompt_tokens)
            est = estimate(backend, m.price, m.pool, m.stats, prompt_tokens, expected, objectives,
                           healthy=ok, cached_tokens=cached)
            (healthy if ok else sick).append(est)
        ranked = rank(policy, healthy, objectives, self._rng)
        if len(ranked) > 1:
            self._explore(ranked, objectives, now)
        if sick:
            ranked += rank("latency", sick, Objectives(), self._rng)
        return ranked

    def _explore(self, ranked: list[Estimate], objectives: Objectives, now: float) -> None:
        """Now and then, put first a backend whose figures are stale, if it meets the objectives.

        Prices and predictions are corrected only by answers: a backend that a wrong prior
        ranks last would never be measured, and slots past a prior that understates them
        would never be filled. A bounded share of requests keeps every backend's figures
        fresh and probes unconfirmed slot counts, only where the objectives still hold.
        """
        if self._rng.random() >= self.settings.explore_share:
            return
        stale = [
            e for e in ranked[1:]
            if (e.probing or self._stale(e.backend.name, now)) and e.meets(objectives)
        ]
        if stale:
            pick = self._rng.choice(stale)
            ranked.remove(pick)
            ranked.insert(0, pick)

    def _stale(self, name: str, now: float) -> bool:
        m = self._members[name]
        if not m.price.hourly:
            return False  # a per-token price is exact: nothing to learn worth paying for
        return m.measured_at is None or now - m.measured_at > STALE_S

    def allows(self, name: str) -> bool:
        """Whether ``name`` may be tried now (its breaker is not open, no back-off asked)."""
        return self._members[name].breaker.allows(self.clock())

    def may_retry(self) -> bool:
        """Whether the fleet-wide retry budget allows one more attempt."""
        return self._retries < 1 + self.settings.retry_budget_ratio * self._first_attempts

    def attempt_started(
        self, name: str, *, retry: bool, prompt: PromptBlocks | None = None
    ) -> None:
        """Count an attempt (for the retry budget, stats and a half-open trial); the backend
        now holds ``prompt``'s prefix, if it caches prefixes."""
        member = self._members[name]
        if prompt is not None and member.backend.capabilities.prefix_cache:
            self._prefixes.sent(name, prompt)
        # Decay so the budget reflects recent traffic rather than all time.
        self._first_attempts = self._first_attempts * 0.999 + (0 if retry else 1)
        self._retries = self._retries * 0.999 + (1 if retry else 0)
        member.stats.started()
        member.breaker.on_attempt()

    def first_token(self, name: str, ttft_s: float) -> None:
        """The attempt produced its first output."""
        member = self._members[name]
        if member.stats.first_token(ttft_s):
            member.pool.saw_full()
            member.sync()
        member.breaker.on_success()

    def attempt_failed(self, name: str, exc: BackendError) -> None:
        """The attempt failed before its first token."""
        member = self._members[name]
        member.stats.failed()
        if isinstance(exc, Overloaded):
            member.breaker.back_off(exc.retry_after, self.clock())
            member.breaker.trial_in_flight = False  # a half-open trial that was refused
        elif isinstance(exc, BadRequest):
            member.breaker.on_success()  # it answered: the request was at fault, not the server
        else:
            member.breaker.on_failure(self.clock())

    def attempt_abandoned(self, name: str, waited_s: float) -> None:
        """The attempt was given up after ``waited_s`` without a first token, far past its
        prediction: a failure for the breaker, and a lower bound on its TTFT, so that a slow
        but working backend is predicted slower (and waited for longer) next time."""
        member = self._members[name]
        member.stats.first_token(waited_s)
        member.stats.finished(ok=False, output_tokens=0, decode_s=0.0)
        member.breaker.on_failure(self.clock())

    def finished(self, name: str, *, ok: bool, output_tokens: int, decode_s: float) -> None:
        """A started generation ended (completed, broken or cancelled)."""
        member = self._members[name]
        member.stats.finished(ok=ok, output_tokens=output_tokens, decode_s=decode_s)
        if ok and output_tokens:
            member.measured_at = self.clock()
            old = self._answer_tokens
            self._answer_tokens = (
                output_tokens if old is None else old + ANSWER_ALPHA * (output_tokens - old)
            )

    # -- fleet economics --------------------------------------------------------------------

    def observe_instances(self, name: str, ready: int, up: int) -> None:
        """Discovery's count of a backend's instances: ``ready`` serving, ``up`` listed."""
        member = self._members[name]
        member.pool.observe_instances(ready, up)
        member.sync()

    def desired_instances(self, name: str) -> int:
        """Instances the router wants for ``name``, exported for the pool's autoscaler.

        Exporting is asking: without discovery, the pool's count follows what was asked.
        """
        m = self._members[name]
        want = self._want(m)
        m.desired = want
        m.pool.asked(want)
        m.sync()
        return want

    def _want(self, m: _Member) -> int:
        """The allocation's count for the demand, or more if the work on it now needs more."""
        pool = m.pool
        settings = pool.settings
        if not pool.elastic:
            return settings.instances
        allocated = settings.min_instances
        for names in self._groups:
            if m.backend.name in names:
                group = [self._members[n] for n in names]
                demand = max(sum(self._tokens_per_s(x) for x in group), self._offered(names))
                offers = [self._offer(x) for x in group]
                allocated = max(allocated, allocate(demand, offers)[m.backend.name])
        # Work already past the warm floor keeps the instances it fills at the target (a
        # partly filled one is the allocation's call: it may be cheaper at the API).
        fill = max(1e-9, pool.slots_per_instance * pool.fill(m.stats.concurrency))
        past = max(0.0, m.stats.concurrency - pool.sunk_slots)
        busy = settings.min_instances + math.floor(past / fill)
        return min(settings.max_instances, max(allocated, busy))

    def _offered(self, names: frozenset[str]) -> float:
        """Output tokens/s arriving for the backends ``names``: the answer lengths requests
        planned over them were planned for, per second (what the demand will be once they
        run). Each request counts at the length known when it arrived."""
        now = self.clock()
        return sum(a.per_s(now) for key, a in self._arrivals.items() if key <= names)

    def _tokens_per_s(self, m: _Member) -> float:
        """Output tokens/s the work on ``m`` asks for now: each request there, running or
        waiting for a slot, at the rate a slot decodes at its batch (Little's law, so long
        answers still running count as much as the short ones that have finished).

        Only once an answer has been measured there: on the prior's TPOT alone (off by up to
        2x either way) a backlog on a backend not yet measured would read as demand that is
        not there, and instances bought for it stay up through their scale-down wait. The
        arrivals count that work until then."""
        stats = m.stats
        if not stats.concurrency or stats.tpot_s is None:
            return 0.0
        if not m.price.hourly:
            return stats.concurrency / stats.tpot_at(1.0)
        per_instance = min(stats.concurrency, m.pool.slots) / max(m.pool.ready, 1.0)
        return stats.concurrency / stats.tpot_at(per_instance)

    def _offer(self, m: _Member) -> Offer:
        """What ``m`` offers the allocation, from its price, pool view and measurements."""
        expected = self.expected_tokens(1 << 20)
        if not m.price.hourly:
            prompt = round(self._prompt_tokens or 0)
            return Offer(m.backend.name, True, m.price.per_token(prompt, expected))
        limit = self.objectives.tpot_limit_s
        tokens_per_s = m.price.instance_tokens_per_s(m.pool, m.stats, limit)
        # Shedding instances raises the batch on those left: the decode line is trusted only
        # so far past the batches answers were measured at (its slope may be the prior's).
        reach = m.stats.line.reach
        kept = math.inf if not reach else m.price.instance_tokens_per_s(
            m.pool, m.stats, limit, max_batch=REACH * reach)
        pool = m.pool.settings
        return Offer(
            m.backend.name,
            False,
            m.price.usd_per_instance_s / tokens_per_s,
            tokens_per_s=tokens_per_s,
            kept_tokens_per_s=kept,
            usd_per_instance_s=m.price.usd_per_instance_s,
            sunk_instances=pool.sunk_instances,
            max_instances=pool.ceiling,
            up_instances=round(m.pool.up),
            elastic=m.pool.elastic,
            measured=m.stats.tpot_s is not None or m.pool.ready > 0,
            boot_s=pool.scale_up_s,
            scale_down_s=pool.scale_down_s,
        )

    def billed_instances(self, name: str) -> float | None:
        """Instances of ``name`` paid for now (None for a per-token backend)."""
        m = self._members[name]
        return m.pool.billed_instances() if m.price.hourly else None

    # -- health -------------------------------------------------------------------------

    def ready(self) -> bool:
        """At least one backend of each served model has been probed healthy."""
        models = {m for member in self._members.values() for m in member.backend.models}
        return all(
            any(x.healthy for x in self._members.values() if model in x.backend.models)
            for model in models
        )

    def health(self) -> dict[str, dict[str, object]]:
        """Per-backend health, breaker state and live figures, for /readyz and metrics."""
        return {name: self._health(m) for name, m in self._members.items()}

    def _health(self, m: _Member) -> dict[str, object]:
        s = m.stats
        load = s.load
        return {
            "healthy": m.healthy,
            "detail": load.detail if load is not None and load.detail else None,
            "breaker": m.breaker.state.value,
            "in_flight": s.in_flight,
            "waiting": load.waiting if load is not None else None,
            "kv_usage": load.kv_usage if load is not None else None,
            "error_rate": round(s.error_rate, 4),
            "ttft_s": {"ewma": s.ttft_s, "p50": s.ttft_percentile(0.5),
                       "p99": s.ttft_percentile(0.99)},
            "tpot_s": {"ewma": s.tpot_s, "p50": s.tpot_percentile(0.5),
                       "p99": s.tpot_percentile(0.99)},
            "output_tokens_per_s": round(s.output_tokens_per_s(), 2),
            "instances": {"ready": m.pool.ready, "up": m.pool.up,
                          "desired": m.desired},
            "slots_per_instance": round(m.pool.slots_per_instance, 1),
        }

    def observe_load(self, name: str, snapshot: LoadSnapshot) -> None:
        """Record a probe's answer: health, and the load figures predictions use."""
        member = self._members[name]
        if snapshot.healthy != member.healthy or not member.probed:
            log.info("backend %s healthy=%s %s", name, snapshot.healthy, snapshot.detail)
        member.healthy, member.probed = snapshot.healthy, True
        member.stats.observe_load(snapshot)
        stats = member.stats
        step = stats.tpot_at(stats.concurrency / max(member.pool.ready, 1.0))
        member.pool.observe_load(snapshot, stats.in_flight, stats.start_rate * step)
        stats.upstream_queue = member.pool.queue_seen
        member.sync()

    async def probe_all(self) -> None:
        """Probe every backend once, concurrently."""
        await asyncio.gather(*(self._probe(m) for m in self._members.values()))

    async def _probe(self, member: _Member) -> None:
        timeout = member.config.timeouts.connect_s * 2
        if member.discovery is not None:
            try:
                found = await asyncio.wait_for(member.discovery.endpoints(), timeout)
                self.observe_instances(member.backend.name, found.ready, found.up)
            except Exception as exc:  # the last count stands until a lookup works again
                log.warning("discovery for %s failed: %s", member.backend.name, exc)
        try:
            snapshot = await asyncio.wait_for(member.backend.probe(), timeout)
        except Exception as exc:  # any probe failure means unhealthy
            snapshot = LoadSnapshot(healthy=False, detail=f"{type(exc).__name__}: {exc}")
        self.observe_load(member.backend.name, snapshot)

    async def start(self) -> None:
        """Probe now, then on an interval in the background."""
        self._probe_task = asyncio.create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while True:
            await self.probe_all()
            if self.ready():
                self.became_ready.set()
            for name in self._members:
                self.desired_instances(name)  # keeps the undiscovered pools' counts current
            await asyncio.sleep(self.settings.probe_interval_s)

    async def aclose(self) -> None:
        """Stop probing and close every backend."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        await asyncio.gather(*(m.backend.aclose() for m in self._members.values()))
        for m in self._members.values():
            if isinstance(m.discovery, KubernetesDiscovery):
                await m.discovery.aclose()
