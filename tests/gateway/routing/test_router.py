"""The Router on scripted backends and a virtual clock: policies, breakers, budget, fallback."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from adapters.base import Capabilities, LoadSnapshot, Overloaded, Unavailable
from gateway.errors import InvalidRequest
from gateway.openai.generation import open_generation
from gateway.routing.breaker import BreakerState
from gateway.routing.policies import Objectives
from gateway.routing.router import Needs, Router
from gateway.settings import BackendSettings, RoutingSettings
from tests.gateway.doubles import Script, ScriptedBackend

pytestmark = pytest.mark.timeout(10)


class Clock:
    """Virtual time the Router reads."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _config(name: str, **fields: Any) -> BackendSettings:
    base: dict[str, Any] = {"name": name, "kind": "vllm", "url": "http://x",
                            "models": {"test-model": "m"}, "price": {"usd_per_hour": 4.0}}
    return BackendSettings.model_validate({**base, **fields})


def _router(configs: list[BackendSettings], clock: Clock, **routing: Any
            ) -> tuple[Router, dict[str, ScriptedBackend]]:
    backends = {c.name: ScriptedBackend(c.name, models=c.models) for c in configs}
    router = Router(list(backends.values()), {c.name: c for c in configs},
                    RoutingSettings(**routing), seed=1, clock=clock)
    return router, backends


NO_OBJECTIVES = Objectives()


def _first(router: Router, objectives: Objectives = NO_OBJECTIVES) -> str:
    plan = router.plan(router.backends, "cost", objectives, 100, 100)
    return plan[0].backend.name


def test_cost_spills_to_the_next_cheapest_exactly_when_the_cheapest_misses_the_objective() -> None:
    clock = Clock()
    prior = {"max_concurrency": 4, "ttft_s": 0.1, "tpot_s": 0.01, "output_tokens_per_s": 400}
    cheap = _config("cheap", price={"usd_per_hour": 1.0}, capacity=prior)
    dear = _config("dear", price={"usd_per_hour": 3.0}, capacity=prior)
    router, _ = _router([cheap, dear], clock)
    objectives = Objectives(max_ttft_s=1.0)
    for _ in range(8):  # both have 4 slots; the 8th request still fits on "dear"
        plan = router.plan(router.backends, "cost", objectives, 100, 100)
        by_name = {e.backend.name: e for e in plan}
        assert by_name["dear"].meets(objectives)
        expected = "cheap" if by_name["cheap"].meets(objectives) else "dear"
        assert plan[0].backend.name == expected
        router.attempt_started(plan[0].backend.name, retry=False)
    assert router.stats("cheap").in_flight >= 4  # it was filled before anything spilled
    assert router.stats("dear").in_flight > 0
    assert router.stats("cheap").spill_rate() > 0  # and the spill is visible to autoscalers


def test_marginal_cost_follows_measured_throughput_not_a_price_list() -> None:
    clock = Clock()
    prior = {"max_concurrency": 8, "ttft_s": 0.1, "tpot_s": 0.01, "output_tokens_per_s": 400}
    a = _config("a", capacity=prior)
    b = _config("b", capacity=prior)
    router, _ = _router([a, b], clock)
    assert {_first(router) for _ in range(20)} == {"a", "b"}  # a tie: both get picked
    for _ in range(5):  # "a" turns out three times slower per token than its prior says
        router.attempt_started("a", retry=False)
        router.first_token("a", 0.1)
        router.finished("a", ok=True, output_tokens=101, decode_s=3.0 * 0.01 * 100)
    plan = router.plan(router.backends, "cost", Objectives(), 100, 100)
    assert plan[0].backend.name == "b"
    assert plan[1].usd_per_output_token > 2 * plan[0].usd_per_output_token


def test_latency_policy_prefers_the_faster_backend_and_balanced_weighs_both() -> None:
    clock = Clock()
    fast = _config("fast", price={"usd_per_mtok_input": 1.0, "usd_per_mtok_output": 30.0},
                   capacity={"ttft_s": 0.05, "tpot_s": 0.005})
    slow = _config("slow", price={"usd_per_hour": 1.0},
                   capacity={"ttft_s": 0.5, "tpot_s": 0.05, "output_tokens_per_s": 1000})
    router, _ = _router([fast, slow], clock)
    latency = router.plan(router.backends, "latency", Objectives(), 10, 100)
    cost = router.plan(router.backends, "cost", Objectives(), 10, 100)
    assert latency[0].backend.name == "fast"
    assert cost[0].backend.name == "slow"
    assert len(router.plan(router.backends, "balanced", Objectives(), 10, 100)) == 2


def test_breaker_opens_after_consecutive_failures_and_recovers_through_a_trial() -> None:
    clock = Clock()
    router, _ = _router([_config("a"), _config("b")], clock,
                        breaker_failures=3, breaker_cooldown_s=10.0)
    for _ in range(3):
        router.attempt_started("a", retry=False)
        router.attempt_failed("a", Unavailable("down"))
    assert router.breaker("a").state is BreakerState.OPEN
    assert [e.backend.name for e in router.plan(router.backends, "cost", Objectives(), 1, 1)] \
        == ["b"]
    clock.now += 9.9
    assert not router.allows("a")
    clock.now += 0.2  # cooldown over: half-open, one trial
    assert router.allows("a")
    router.attempt_started("a", retry=False)
    assert not router.allows("a")  # the trial is in flight: nobody else
    router.attempt_failed("a", Unavailable("still down"))
    assert router.breaker("a").state is BreakerState.OPEN  # a failed trial re-opens
    clock.now += 10.1
    router.attempt_started("a", retry=False)
    router.first_token("a", 0.1)
    assert router.breaker("a").state is BreakerState.CLOSED


def test_overloaded_backend_is_skipped_for_the_time_it_asks() -> None:
    clock = Clock()
    router, _ = _router([_config("a"), _config("b")], clock)
    router.attempt_started("a", retry=False)
    router.attempt_failed("a", Overloaded("busy", retry_after=2.0))
    assert router.breaker("a").state is BreakerState.CLOSED  # load is not a fault
    names = {e.backend.name for e in router.plan(router.backends, "cost", Objectives(), 1, 1)}
    assert names == {"b"}
    clock.now += 2.01
    names = {e.backend.name for e in router.plan(router.backends, "cost", Objectives(), 1, 1)}
    assert names == {"a", "b"}


def test_unhealthy_backends_come_after_every_healthy_one() -> None:
    clock = Clock()
    router, _ = _router([_config("cheap", price={"usd_per_hour": 0.1}), _config("dear")], clock)
    router.observe_load("cheap", LoadSnapshot(healthy=False, detail="no ready instance"))
    router.observe_load("dear", LoadSnapshot(healthy=True, running=0, waiting=0))
    plan = router.plan(router.backends, "cost", Objectives(), 1, 1)
    assert [e.backend.name for e in plan] == ["dear", "cheap"]
    assert not plan[1].healthy


def test_stalled_backend_is_predicted_slow_before_any_failure_is_counted() -> None:
    clock = Clock()
    router, _ = _router([_config("cold", price={"usd_per_hour": 0.1}), _config("warm")], clock)
    objectives = Objectives(max_ttft_s=1.0)
    assert _first(router, objectives) == "cold"
    router.attempt_started("cold", retry=False)  # booting: no token comes
    clock.now += 2.0
    assert _first(router, objectives) == "warm"


def test_no_request_goes_to_a_backend_that_does_not_serve_its_model() -> None:
    clock = Clock()
    other = _config("other", models={"other-model": "m"})
    no_seed = _config("plain")
    router, backends = _router([other, no_seed], clock)
    backends["plain"].capabilities = Capabilities(chat=True)
    assert [b.name for b in router.candidates("test-model", Needs())] == ["plain"]
    assert router.candidates("missing-model", Needs()) == []
    with pytest.raises(InvalidRequest) as info:
        router.candidates("test-model", Needs(seed=True))
    assert info.value.param == "seed"


def test_retry_budget_stops_a_fleet_wide_outage_from_multiplying_load() -> None:
    clock = Clock()
    configs = [_config(n) for n in "abc"]
    router, _ = _router(configs, clock, retry_budget_ratio=0.1, breaker_failures=10_000)
    attempts = 0
    for _ in range(200):
        plan = router.plan(router.backends, "cost", Objectives(), 1, 1)
        for i, est in enumerate(plan):
            if i and not router.may_retry():
                break
            router.attempt_started(est.backend.name, retry=i > 0)
            router.attempt_failed(est.backend.name, Unavailable("down"))
            attempts += 1
    assert attempts <= 200 * 1.1 + 2  # 10% retries, not 3x


@pytest.mark.anyio
async def test_fallback_before_the_first_byte_goes_to_the_next_best() -> None:
    clock = Clock()
    router, backends = _router([_config("a", price={"usd_per_hour": 0.1}), _config("b")], clock)
    backends["a"].script = lambda _: Script(error_before=Unavailable("down"))
    plan = router.plan(router.backends, "cost", Objectives(), 1, 4)
    assert plan[0].backend.name == "a"

    def build(b: Any) -> Any:
        from adapters.base import GenerationRequest
        return GenerationRequest(request_id="r", model="m", max_tokens=4, prompt="hi"), ()

    gen = await open_generation(0, plan, router, build, deadline=float("inf"))
    assert gen.backend.name == "b" and gen.fallbacks == 1
    await gen.stream.aclose()


@pytest.mark.anyio
async def test_fallback_stops_at_the_deadline() -> None:
    import time

    clock = Clock()
    router, backends = _router([_config("a", price={"usd_per_hour": 0.1}), _config("b")], clock)
    backends["a"].script = lambda _: Script(error_before=Unavailable("down"))
    plan = router.plan(router.backends, "cost", Objectives(), 1, 4)

    def build(b: Any) -> Any:
        from adapters.base import GenerationRequest
        return GenerationRequest(request_id="r", model="m", max_tokens=4, prompt="hi"), ()

    with pytest.raises(Unavailable):
        await open_generation(0, plan, router, build, deadline=time.monotonic() - 1)
    assert backends["b"].requests == []


def test_plan_is_deterministic_for_a_seed() -> None:
    clock = Clock()
    configs = [_config(n) for n in "abcd"]
    picks = []
    for _ in range(2):
        router, _ = _router(configs, clock)
        picks.append([_first(router) for _ in itertools.repeat(None, 10)])
    assert picks[0] == picks[1]


def test_tpot_is_calibrated_on_the_batch_the_answer_decoded_in() -> None:
    clock = Clock()
    prior = {"max_concurrency": 8, "ttft_s": 0.1, "tpot_s": 0.01, "output_tokens_per_s": 200}
    router, _ = _router([_config("a", capacity=prior)], clock)
    for _ in range(8):  # a full batch decodes together; TPOT at 8 is 8/200 = 0.04 s
        router.attempt_started("a", retry=False)
        router.first_token("a", 0.1)
    clock.now += 40.0
    for _ in range(7):  # most of the batch ends; the last answer finishes almost alone
        router.finished("a", ok=True, output_tokens=1001, decode_s=40.0)
    clock.now += 0.1
    router.finished("a", ok=True, output_tokens=1001, decode_s=40.1)
    # Measured exactly as the prior says: judged against the batch it ran in, no correction
    # (judged against the batch it ended in, it would look four times slower).
    assert 0.8 < router.stats("a").tpot_ratio < 1.25


def test_a_wait_for_a_slot_is_not_learned_as_the_backends_ttft() -> None:
    clock = Clock()
    prior = {"max_concurrency": 2, "ttft_s": 0.1, "tpot_s": 0.01, "output_tokens_per_s": 200}
    router, _ = _router([_config("a", capacity=prior)], clock)
    for _ in range(2):
        router.attempt_started("a", retry=False)
        router.first_token("a", 0.1)
    for _ in range(6):  # full: these queued, and their first tokens came late
        router.attempt_started("a", retry=False)
    for _ in range(6):
        router.first_token("a", 5.0)
    assert router.stats("a").measured_ttft() == pytest.approx(0.1)


def test_a_filled_batch_that_has_not_started_ending_is_not_queued_on() -> None:
    clock = Clock()
    prior = {"max_concurrency": 4, "ttft_s": 0.1, "tpot_s": 0.01, "output_tokens_per_s": 400}
    router, _ = _router([_config("cheap", price={"usd_per_hour": 1.0}, capacity=prior),
                         _config("dear", price={"usd_per_hour": 3.0}, capacity=prior)], clock)
    for _ in range(4):  # filled at once: nothing will end for a whole answer
        router.attempt_started("cheap", retry=False)
        router.first_token("cheap", 0.1)
    objectives = Objectives(max_ttft_s=1.0)
    assert _first(router, objectives) == "dear"
    for _ in range(100):  # answers end often now: one more can wait for a slot
        clock.now += 0.1
        router.finished("cheap", ok=True, output_tokens=2, decode_s=0.01)
        router.attempt_started("cheap", retry=False)
        router.first_token("cheap", 0.1)
    assert _first(router, objectives) == "cheap"


def _spill_fleet(clock: Clock) -> Router:
    prior = {"max_concurrency": 4, "ttft_s": 0.1, "tpot_s": 0.01, "output_tokens_per_s": 400}
    configs = [
        _config("reserved", price={"usd_per_hour": 1.0}, capacity=prior),
        _config("pool-a", price={"usd_per_hour": 2.0}, capacity=prior),
        _config("pool-b", price={"usd_per_hour": 2.5}, capacity=prior),
        _config("api", price={"usd_per_mtok_output": 40.0}, capacity=prior),
    ]
    router, _ = _router(configs, clock)
    router.observe_load("reserved", LoadSnapshot(healthy=True, running=4, kv_usage=1.0))
    router.observe_load("api", LoadSnapshot(healthy=True, running=0))
    for pool in ("pool-a", "pool-b"):  # scaled to zero
        router.observe_load(pool, LoadSnapshot(healthy=False, detail="0/0 instances ready"))
    return router


def test_spill_asks_only_the_cheapest_pool_that_scales_to_grow() -> None:
    clock = Clock()
    router = _spill_fleet(clock)
    for _ in range(4):
        router.attempt_started("reserved", retry=False)
    objectives = Objectives(max_ttft_s=1.0)
    for _ in range(50):  # 10 requests/s spill past the full reserved instance
        assert _first(router, objectives) == "api"
        clock.now += 0.1
    a, b, reserved = (router.stats(n) for n in ("pool-a", "pool-b", "reserved"))
    assert b.spill_rate() == 0 and reserved.spill_rate() == 0
    assert 8.0 < a.spill_rate() < 12.0  # read at its rate after five seconds, not 40% of it
    # Little's law at the full batch: 10/s x 100 tokens x (4 / 400 tok/s) = 10 slots.
    assert 8.0 < a.spill_slots() < 12.0


def test_spill_moves_on_from_a_pool_that_does_not_grow() -> None:
    clock = Clock()
    router = _spill_fleet(clock)
    for _ in range(4):
        router.attempt_started("reserved", retry=False)
    objectives = Objectives(max_ttft_s=1.0)
    for _ in range(200):  # pool-a never comes up (at its ceiling, or broken)
        _first(router, objectives)
        clock.now += 1.0
    assert router.stats("pool-a").stuck
    assert router.stats("pool-b").spill_rate() > 0.5
