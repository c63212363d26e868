"""Simulated backends: continuous-batching instances, autoscaling pools, a per-token API.

An instance runs one batch step at a time: it admits queued requests into free decode slots
(their prefill stalls that step, as in an engine without chunked prefill), then every request
in a slot gains one token. The step takes ``decode_step_s`` at the batch size, interpolated.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from adapters.base import Capabilities, Delta, GenerationRequest, LoadSnapshot
from bench.fleet.clock import EventQueue
from bench.fleet.workload import SimRequest
from gateway.settings import BackendSettings, SimulateSettings

Notify = Callable[[SimRequest], None]
KV_TOKENS_PER_SLOT = 2048  # KV-cache capacity per decode slot, for vLLM's usage figure


def step_table(points: dict[int, float], slots: int) -> list[float]:
    """Seconds per decode step for every batch size 0..slots, linearly interpolated."""
    keys = sorted(points)
    table = []
    for b in range(slots + 1):
        if b <= keys[0]:
            table.append(points[keys[0]])
            continue
        hi = next((k for k in keys if k >= b), keys[-1])
        lo = max(k for k in keys if k <= min(b, hi))
        if hi == lo:  # past the last point: extend its slope
            lo = keys[-2] if len(keys) > 1 else lo
        span = (points[hi] - points[lo]) / (hi - lo) if hi != lo else 0.0
        table.append(points[lo] + span * (b - lo))
    return table


@dataclass(slots=True)
class Hooks:
    """What a simulated backend reports back to the simulation (and so to the Router)."""

    first_token: Notify
    done: Notify


class Instance:
    """One server: decode slots, a waiting queue, one batch step at a time."""

    def __init__(self, sim: SimulateSettings, events: EventQueue, hooks: Hooks, ready_at: float):
        self.slots = sim.slots
        self.max_queue = sim.max_queue
        self.overhead = sim.ttft_overhead_s
        self.prefill_tps = sim.prefill_tokens_per_s
        self.steps_s = step_table(sim.decode_step_s, sim.slots)
        self.events, self.hooks = events, hooks
        self.queue: deque[SimRequest] = deque()
        self.active: list[tuple[int, int, SimRequest]] = []  # (finish step, seq, request)
        self.steps = 0
        self.stepping = False
        self.draining = False
        self.started_at = events.now
        self.stopped_at: float | None = None
        self.ready_at = ready_at
        self._seq = 0

    @property
    def ready(self) -> bool:
        """Booted and accepting."""
        return self.events.now >= self.ready_at and not self.draining

    @property
    def load(self) -> int:
        """Requests decoding or waiting here."""
        return len(self.active) + len(self.queue)

    def has_room(self) -> bool:
        """Whether one more request fits in a slot or the queue."""
        return self.load < self.slots + self.max_queue

    def accept(self, req: SimRequest) -> None:
        """Queue a request and make sure the batch loop runs."""
        self.queue.append(req)
        if not self.stepping and self.events.now >= self.ready_at:
            self.stepping = True
            self.events.at(self.events.now, self._step)

    def _step(self) -> None:
        now = self.events.now
        admitted: list[SimRequest] = []
        prompt = 0
        while self.queue and len(self.active) + len(admitted) < self.slots:
            req = self.queue.popleft()
            if req.failed:  # the gateway gave up on it while it queued
                continue
            req.started = True
            admitted.append(req)
            prompt += req.prompt_tokens
        prefill_s = self.overhead + prompt / self.prefill_tps if admitted else 0.0
        if admitted:
            self.events.at(now + prefill_s, lambda: self._first(admitted))
        batch = len(self.active) + len(admitted)
        if batch == 0:
            self.stepping = False
            self._maybe_stop()
            return
        for req in admitted:
            self._seq += 1
            heapq.heappush(self.active, (self.steps + req.output_tokens - 1, self._seq, req))
        self.events.at(now + prefill_s + self.steps_s[batch], self._end_step)

    def _first(self, admitted: list[SimRequest]) -> None:
        for req in admitted:
            self.hooks.first_token(req)

    def kv_tokens(self) -> int:
        """KV-cache entries held: each decoding request's prompt and tokens so far."""
        held = 0
        for finish, _, req in self.active:
            left = finish - self.steps
            held += req.prompt_tokens + max(0, req.output_tokens - 1 - left)
        return held

    def _end_step(self) -> None:
        self.steps += 1
        active = self.active
        while active and active[0][0] <= self.steps:
            self.hooks.done(heapq.heappop(active)[2])
        self._step()

    def _maybe_stop(self) -> None:
        if self.draining and not self.queue and not self.active and self.stopped_at is None:
            self.stopped_at = self.events.now

    def drain(self) -> None:
        """Stop accepting; billing ends when the last request leaves."""
        self.draining = True
        if not self.stepping:
            self._maybe_stop()


class SimBackend:
    """What the Router sees of a simulated backend: the ``Backend`` protocol, never generating."""

    def __init__(self, config: BackendSettings) -> None:
        self.name = config.name
        self.kind: str = config.kind
        self.models: Mapping[str, str] = dict(config.models)
        self.capabilities = Capabilities(chat=True, stop=True)
        self.config = config

    def generate(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        """The simulator serves requests itself; the Router never calls this."""
        raise NotImplementedError

    async def probe(self) -> LoadSnapshot:
        """Answered by ``snapshot`` in virtual time instead."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Nothing to release."""


class Pool(SimBackend):
    """Instances behind one endpoint: least-loaded balancing, target-tracking autoscaling."""

    def __init__(self, config: BackendSettings, events: EventQueue, hooks: Hooks) -> None:
        super().__init__(config)
        assert config.simulate is not None and config.price.usd_per_hour is not None
        self.sim: SimulateSettings = config.simulate
        self.pool = config.pool
        self.always_on = config.pool.billing == "reserved"
        self.usd_per_hour = config.price.usd_per_hour
        self.events, self.hooks = events, hooks
        self.instances: list[Instance] = []
        self.retired: list[Instance] = []
        self.pending: deque[SimRequest] = deque()  # arrived while no instance was up
        self._surplus_since: float | None = None
        first = self.pool.sunk_instances
        for _ in range(first):
            self.instances.append(Instance(self.sim, events, hooks, ready_at=0.0))

    def submit(self, req: SimRequest) -> bool:
        """Take the request, or refuse it (the backend's Overloaded) when full."""
        ready = [i for i in self.instances if i.ready]
        if ready:
            target = min(ready, key=lambda i: i.load)
            if not target.has_room():
                return False
            target.accept(req)
            return True
        if len(self.pending) >= self.sim.max_queue:
            return False
        self.pending.append(req)
        if not any(not i.draining for i in self.instances):
            self._start(1)  # scale from zero on demand, as a serverless activator does
        return True

    def snapshot(self) -> LoadSnapshot:
        """The probe's answer, shaped like the real server's metrics for this kind.

        vLLM: running, waiting and the share of KV-cache blocks in use (not of slots); TGI and
        Triton: batch size and queue; JetStream: its prefill backlog and the share of slots in
        use, no running count. Nothing ready (scaled to zero, booting) fails the probe, as a
        Service with no ready endpoint does.
        """
        ready = [i for i in self.instances if i.ready]
        # A scrape through the Service reaches ready instances only; one draining its last
        # requests has left the endpoint list.
        running = sum(len(i.active) for i in ready)
        waiting = len(self.pending) + sum(len(i.queue) for i in ready)
        detail = f"{len(ready)}/{len(self.instances)} instances ready"
        if not ready:
            return LoadSnapshot(False, detail=detail)
        slots = len(ready) * self.sim.slots
        if self.kind == "jetstream":
            return LoadSnapshot(True, waiting=waiting, kv_usage=running / slots, detail=detail)
        if self.kind == "vllm":
            kv = sum(i.kv_tokens() for i in ready) / (slots * KV_TOKENS_PER_SLOT)
            return LoadSnapshot(True, running=running, waiting=waiting, kv_usage=min(1.0, kv),
                                detail=detail)
        return LoadSnapshot(True, running=running, waiting=waiting, detail=detail)

    def endpoints(self) -> tuple[int, int]:
        """What discovery lists: (ready, all) instances, booting ones not ready."""
        live = [i for i in self.instances if not i.draining]
        return sum(i.ready for i in live), len(live)

    def autoscale(self, desired: int) -> None:
        """Follow the gateway's exported wanted count: up at once, down after a quiet spell.

        This is what an HPA or KEDA scaler on ``tollgate.pool.desired_instances`` does, with
        its scale-down stabilisation window set to the pool's ``scale_down_s``.
        """
        if self.always_on:
            return
        live = [i for i in self.instances if not i.draining]
        want = min(self.pool.max_instances, max(self.pool.min_instances, desired))
        now = self.events.now
        if want > len(live):
            self._start(want - len(live))
            self._surplus_since = None
        elif want < len(live):
            if self._surplus_since is None:
                self._surplus_since = now
            elif now - self._surplus_since >= self.pool.scale_down_s:
                # As a ReplicaSet picks pods to delete: not yet ready first, the newest of
                # them first; then the least loaded.
                order = sorted(live, key=lambda i: (i.ready, i.load, -i.started_at))
                for inst in order[: len(live) - want]:
                    inst.drain()
                self._surplus_since = None
        else:
            self._surplus_since = None
        self._retire()

    def _start(self, count: int) -> None:
        ready_at = self.events.now + self.pool.scale_up_s
        for _ in range(count):
            self.instances.append(Instance(self.sim, self.events, self.hooks, ready_at))
        self.events.at(ready_at, self._booted)

    def _booted(self) -> None:
        ready = [i for i in self.instances if i.ready]
        while self.pending and ready:
            req = self.pending.popleft()
            if not req.failed:
                min(ready, key=lambda i: i.load).accept(req)

    def _retire(self) -> None:
        gone = [i for i in self.instances if i.stopped_at is not None]
        if gone:
            self.retired += gone
            self.instances = [i for i in self.instances if i.stopped_at is None]

    def cost(self, start: float, end: float) -> float:
        """Dollars billed in [start, end]: reserved capacity always, a pool while up."""
        if self.always_on:
            return self.pool.instances * (end - start) * self.usd_per_hour / 3600
        seconds = 0.0
        for inst in (*self.instances, *self.retired):
            stop = end if inst.stopped_at is None else min(end, inst.stopped_at)
            seconds += max(0.0, stop - max(start, inst.started_at))
        return seconds * self.usd_per_hour / 3600


class HostedApi(SimBackend):
    """A per-token-priced API: no capacity limit, latency from its own step curve at batch 1."""

    def __init__(self, config: BackendSettings, events: EventQueue, hooks: Hooks) -> None:
        super().__init__(config)
        assert config.simulate is not None
        self.sim = config.simulate
        self.tpot = step_table(self.sim.decode_step_s, 1)[1]
        self.events, self.hooks = events, hooks
        self.running = 0

    def submit(self, req: SimRequest) -> bool:
        """Always taken."""
        now = self.events.now
        req.started = True
        first = now + self.sim.ttft_overhead_s + req.prompt_tokens / self.sim.prefill_tokens_per_s
        self.running += 1
        self.events.at(first, lambda: self.hooks.first_token(req))
        self.events.at(first + self.tpot * (req.output_tokens - 1), lambda: self._done(req))
        return True

    def _done(self, req: SimRequest) -> None:
        self.running -= 1
        self.hooks.done(req)

    def snapshot(self) -> LoadSnapshot:
        """Healthy; a hosted API publishes no load figures."""
        return LoadSnapshot(True)

    def endpoints(self) -> tuple[int, int]:
        """Not discoverable: one endpoint."""
        return 1, 1

    def autoscale(self, desired: int) -> None:
        """Scales itself."""

    def cost(self, start: float, end: float) -> float:
        """Per-token backends are billed per request by the simulation."""
        return 0.0


Model = Pool | HostedApi


def build(config: BackendSettings, events: EventQueue, hooks: Hooks) -> Model:
    """The simulated backend for one configured backend with a ``simulate:`` block."""
    if config.price.usd_per_hour is None:
        return HostedApi(config, events, hooks)
    return Pool(config, events, hooks)
