"""The router: candidates by model and capability, ranked by policy, with health and budget.

Fallback happens in serving, before the first byte, over the ranked list ``plan`` returns;
the router decides whether another attempt is allowed (breakers, retry budget). Every
timestamp comes from the injected ``clock`` so tests and the fleet simulator run on virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from adapters.base import Backend, BackendError, BadRequest, Capabilities, LoadSnapshot, Overloaded
from gateway.errors import InvalidRequest
from gateway.routing.breaker import CircuitBreaker
from gateway.routing.policies import Estimate, Objectives, estimate, rank
from gateway.routing.stats import BackendStats, Clock
from gateway.settings import BackendSettings, RoutingSettings, TimeoutSettings

log = logging.getLogger("tollgate.routing")


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
        return None


@dataclass(slots=True)
class _Member:
    backend: Backend
    config: BackendSettings
    stats: BackendStats
    breaker: CircuitBreaker
    healthy: bool = False
    probed: bool = False


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
        self._members = {
            b.name: _Member(
                backend=b,
                config=configs[b.name],
                stats=BackendStats(prior=configs[b.name].capacity, clock=clock),
                breaker=CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s),
            )
            for b in backends
        }
        self._rng = random.Random(seed)
        self._first_attempts = 0.0
        self._retries = 0.0
        self._probe_task: asyncio.Task[None] | None = None

    @property
    def backends(self) -> list[Backend]:
        """Every configured backend."""
        return [m.backend for m in self._members.values()]

    def stats(self, name: str) -> BackendStats:
        """Live stats of one backend."""
        return self._members[name].stats

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

    def plan(
        self,
        candidates: Sequence[Backend],
        policy: str,
        objectives: Objectives,
        prompt_tokens: int,
        max_tokens: int,
    ) -> list[Estimate]:
        """Candidates that may be tried now, best first under ``policy``.

        Backends whose breaker is open or who asked us to back off are left out; those whose
        last probe failed come after every healthy one. The list is what fallback walks.
        """
        now = self.clock()
        healthy: list[Estimate] = []
        sick: list[Estimate] = []
        for backend in candidates:
            m = self._members[backend.name]
            if not m.breaker.allows(now):
                continue
            ok = m.healthy or not m.probed  # not probed yet: give it the benefit of the doubt
            est = estimate(backend, m.config.price, m.stats, prompt_tokens, max_tokens, healthy=ok)
            (healthy if ok else sick).append(est)
        ranked = rank(policy, healthy, objectives, self._rng)
        if ranked and policy != "latency":
            self._count_spills(ranked[0], healthy, sick, objectives)
        if sick:
            ranked += rank("latency", sick, Objectives(), self._rng)
        return ranked

    def _count_spills(
        self,
        chosen: Estimate,
        healthy: Sequence[Estimate],
        sick: Sequence[Estimate],
        objectives: Objectives,
    ) -> None:
        """Count the request against the cheapest backend that passed it over and can grow.

        A full backend spills, and so does one with nothing ready (a pool scaled to zero
        probes unhealthy); one skipped for a stall is already busy catching up. Only one
        backend hears each spill: the cheapest whose autoscaler has shown it acts (slots
        came or went, or it was scaled to zero) and that has not gone on spilling without
        growing (a reserved instance, a pool at its ceiling). When every autoscaler
        answers the one request, the fleet grows by several times what it needs, and
        in the dearest places too. Before any pool has shown it scales, the cheapest
        passed-over backend that is not known to be stuck hears it.
        """
        price = chosen.usd_per_output_token
        passed: list[tuple[float, BackendStats]] = []
        for est in (*healthy, *sick):
            stats = self._members[est.backend.name].stats
            if est.usd_per_output_token >= price:
                continue
            if est.healthy and (est.meets(objectives) or not stats.saturated):
                continue
            passed.append((est.usd_per_output_token, stats))
        if not passed:
            return
        open_ = [p for p in passed if not p[1].stuck]
        growing = [p for p in open_ if p[1].grows]
        target = min(growing or open_, key=lambda p: p[0])[1] if open_ else None
        for _, stats in passed:
            if stats is target or stats.stuck:  # a stuck one's clock keeps running
                stats.spilled(chosen.expected_tokens)

    def allows(self, name: str) -> bool:
        """Whether ``name`` may be tried now (its breaker is not open, no back-off asked)."""
        return self._members[name].breaker.allows(self.clock())

    def may_retry(self) -> bool:
        """Whether the fleet-wide retry budget allows one more attempt."""
        return self._retries < 1 + self.settings.retry_budget_ratio * self._first_attempts

    def attempt_started(self, name: str, *, retry: bool) -> None:
        """Count an attempt (for the retry budget, stats and a half-open trial)."""
        # Decay so the budget reflects recent traffic rather than all time.
        self._first_attempts = self._first_attempts * 0.999 + (0 if retry else 1)
        self._retries = self._retries * 0.999 + (1 if retry else 0)
        member = self._members[name]
        member.stats.started()
        member.breaker.on_attempt()

    def first_token(self, name: str, ttft_s: float) -> None:
        """The attempt produced its first output."""
        member = self._members[name]
        member.stats.first_token(ttft_s)
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

    def finished(self, name: str, *, ok: bool, output_tokens: int, decode_s: float) -> None:
        """A started generation ended (completed, broken or cancelled)."""
        self._members[name].stats.finished(ok=ok, output_tokens=output_tokens, decode_s=decode_s)

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
            "spill_per_s": round(s.spill_rate(), 3),
        }

    def observe_load(self, name: str, snapshot: LoadSnapshot) -> None:
        """Record a probe's answer: health, and the load figures predictions use."""
        member = self._members[name]
        if snapshot.healthy != member.healthy or not member.probed:
            log.info("backend %s healthy=%s %s", name, snapshot.healthy, snapshot.detail)
        member.healthy, member.probed = snapshot.healthy, True
        member.stats.observe_load(snapshot)

    async def probe_all(self) -> None:
        """Probe every backend once, concurrently."""
        await asyncio.gather(*(self._probe(m) for m in self._members.values()))

    async def _probe(self, member: _Member) -> None:
        timeout = member.config.timeouts.connect_s * 2
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
            await asyncio.sleep(self.settings.probe_interval_s)

    async def aclose(self) -> None:
        """Stop probing and close every backend."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        await asyncio.gather(*(m.backend.aclose() for m in self._members.values()))
