"""The Router on scripted backends and a virtual clock: policies, breakers, budget, fallback."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from adapters.base import Capabilities, LoadSnapshot, Overloaded, Unavailable
from gateway.errors import InvalidRequest
from gateway.openai.generation import open_generation
from gateway.routing.breaker import BreakerState
from gateway.routing.policies import Estimate, Objectives
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


def _elastic(name: str, usd_per_hour: float, capacity: dict[str, Any], *, ready: int = 1,
             **pool: Any) -> BackendSettings:
    spec = {"billing": "elastic", "min_instances": 0, "max_instances": 4,
            "discovery": f"k8s://ns/{name}", **pool}
    return _config(name, price={"usd_per_hour": usd_per_hour}, capacity=capacity, pool=spec)


def _up(router: Router, name: str, ready: int) -> None:
    router.observe_instances(name, ready, ready)
    router.observe_load(name, LoadSnapshot(healthy=ready > 0, running=0, waiting=0))


PRIOR = {"max_concurrency": 4, "ttft_s": 0.1, "tpot_s": 0.01, "output_tokens_per_s": 400}


def test_cost_fills_paid_for_slots_then_the_cheapest_pool_then_the_api() -> None:
    clock = Clock()
    router, _ = _router([
        _config("reserved", price={"usd_per_hour": 9.0}, capacity=PRIOR),  # dear, but sunk
        _elastic("cheap", 1.0, PRIOR),
        _elastic("dear", 3.0, PRIOR),
        _config("api", price={"usd_per_mtok_output": 1000.0}, capacity=PRIOR),
    ], clock, explore_share=0)
    for name in ("cheap", "dear"):
        _up(router, name, 1)
    router.observe_load("reserved", LoadSnapshot(healthy=True, running=0, waiting=0))
    router.observe_load("api", LoadSnapshot(healthy=True))
    objectives = Objectives(max_ttft_s=1.0)
    chosen = []
    for _ in range(17):
        plan = router.plan(router.backends, "cost", objectives, 100, 100)
        chosen.append(plan[0].backend.name)
        router.attempt_started(plan[0].backend.name, retry=False)
    # Each instance takes the 4 slots it is believed to have, and one more while nobody has
    # seen that count full (a prior may understate it); past that it might queue, so the
    # next backend with a slot free goes first, down to the API.
    assert chosen == ["reserved"] * 5 + ["cheap"] * 5 + ["dear"] * 5 + ["api"] * 2


def test_elastic_price_follows_measured_throughput_not_a_price_list() -> None:
    clock = Clock()
    prior = {**PRIOR, "max_concurrency": 8}
    router, _ = _router([_elastic("a", 4.0, prior), _elastic("b", 4.0, prior)], clock)
    for name in ("a", "b"):
        _up(router, name, 1)
    assert {_first(router) for _ in range(20)} == {"a", "b"}  # a tie: both get picked
    for _ in range(150):  # "a" turns out three times slower per token than its prior says
        router.attempt_started("a", retry=False)
        router.first_token("a", 0.1)
        router.finished("a", ok=True, output_tokens=101, decode_s=3.0 * 0.01 * 100)
    plan = router.plan(router.backends, "cost", Objectives(), 100, 100)
    assert plan[0].backend.name == "b"
    # Measured alone, its whole line moves up (the prior's full-batch point still anchors it).
    assert plan[1].usd_per_output_token > 1.5 * plan[0].usd_per_output_token


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


def test_one_request_queued_behind_a_full_instance_does_not_slow_a_pool_but_more_do() -> None:
    clock = Clock()
    pool = _elastic("pool", 0.1, PRIOR)  # 4 slots an instance
    api = _config("api", price={"usd_per_mtok_output": 50.0}, capacity=PRIOR)
    router, _ = _router([pool, api], clock)
    _up(router, "pool", 1)
    for _ in range(5):  # four fill the lone instance, the fifth waits for a slot
        router.attempt_started("pool", retry=False)
    for _ in range(4):
        router.first_token("pool", 0.1)
    clock.now += 2.0
    objectives = Objectives(max_ttft_s=1.0)
    assert _first(router, objectives) == "api"  # one instance: the next would wait too
    _up(router, "pool", 3)  # two more instances, idle: a new request goes to one of them
    assert _first(router, objectives) == "pool"
    router.attempt_started("pool", retry=False)  # a second waiter: most instances are full
    clock.now += 2.0
    assert _first(router, objectives) == "api"


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
    for _ in range(2):  # the upstream shows them full: a queue behind the two running
        router.observe_load("a", LoadSnapshot(healthy=True, running=2, waiting=6))
    for _ in range(6):  # full: these queued, and their first tokens came late
        router.attempt_started("a", retry=False)
    for _ in range(6):
        router.first_token("a", 5.0)
    assert router.stats("a").measured_ttft() == pytest.approx(0.1)


def test_a_filled_batch_that_has_not_started_ending_is_not_queued_on() -> None:
    clock = Clock()
    router, _ = _router([_config("cheap", price={"usd_per_hour": 1.0}, capacity=PRIOR),
                         _config("dear", price={"usd_per_mtok_output": 50.0}, capacity=PRIOR)],
                        clock)
    # The slot count is confirmed: a queue behind the 4 running on two probes.
    for _ in range(2):
        router.observe_load("cheap", LoadSnapshot(healthy=True, running=4, waiting=2))
    router.observe_load("cheap", LoadSnapshot(healthy=True, running=0, waiting=0))
    for _ in range(4):  # filled at once: nothing will end for a whole answer
        router.attempt_started("cheap", retry=False)
        router.first_token("cheap", 0.1)
    objectives = Objectives(max_ttft_s=2.0)

    def cheap() -> Estimate:
        plan = router.plan(router.backends, "cost", objectives, 100, 100)
        return next(e for e in plan if e.backend.name == "cheap")

    assert cheap().queued and not cheap().meets(objectives)
    assert _first(router, objectives) == "dear"
    for _ in range(100):  # answers end often now: one more can wait for a slot
        clock.now += 0.1
        router.finished("cheap", ok=True, output_tokens=2, decode_s=0.01)
        router.attempt_started("cheap", retry=False)
        router.first_token("cheap", 0.1)
    assert cheap().queued and cheap().meets(objectives)


TARGET = {"target_utilisation": 0.8}  # the operator's fill, so the arithmetic is fixed
INSTANT = {"scale_up_s": 0}  # no boot to hedge: pools are sized on the prior as typed


def test_a_pool_not_yet_measured_is_sized_for_the_slow_end_of_its_prior() -> None:
    # 1,000 tokens/s past the reserved instance's 320 at the API's $400/1M: on the prior,
    # pool-a (320 tokens/s an instance) needs 3. Nothing has served there yet and an
    # instance takes a minute to boot: too few leaves the rest at the API for another
    # boot, too many costs an instance through its scale-down wait; the dear API makes
    # planning on the slow end worth it (capped at the pool's 4).
    router = _scaling_fleet(Clock(), scale_up_s=60)
    _measured(router, "reserved", "api")
    _in_flight(router, reserved=4, api=6)
    assert router.desired_instances("pool-a") == 4
    assert router.desired_instances("pool-b") == 0  # the hedge is pool-a's, not a spill
    _up(router, "pool-a", 1)  # serving: measured within an answer, planned on the prior
    assert router.desired_instances("pool-a") == 3


def _scaling_fleet(clock: Clock, api_usd_per_mtok: float = 400.0, **pool_a: Any) -> Router:
    configs = [
        _config("reserved", price={"usd_per_hour": 1.0}, capacity=PRIOR,
                pool={"billing": "reserved", **TARGET}),
        _elastic("pool-a", 2.0, PRIOR, **{**TARGET, **INSTANT, **pool_a}),
        _elastic("pool-b", 2.5, PRIOR, **TARGET, **INSTANT),
        _config("api", price={"usd_per_mtok_output": api_usd_per_mtok}, capacity=PRIOR),
    ]
    router, _ = _router(configs, clock)
    router.observe_load("reserved", LoadSnapshot(healthy=True, running=0, waiting=0))
    router.observe_load("api", LoadSnapshot(healthy=True))
    for pool in ("pool-a", "pool-b"):
        _up(router, pool, 0)  # scaled to zero
    return router


def _in_flight(router: Router, **requests: int) -> None:
    for name, count in requests.items():
        for _ in range(count):
            router.attempt_started(name, retry=False)


def _measured(router: Router, *names: str) -> None:
    """One answer ended on each of ``names`` at the prior's 10 ms a token: work in flight
    there now counts as demand (Little's law needs a measured decode speed)."""
    for name in names:
        router.attempt_started(name, retry=False)
        router.first_token(name, 0.1)
        router.finished(name, ok=True, output_tokens=101, decode_s=1.0)


def test_work_on_a_backend_not_yet_measured_is_not_read_as_demand() -> None:
    # On the prior's TPOT alone, 30 requests at the API would read as 3,000 tokens/s: the
    # prior may be off by 2x either way, and instances bought for a misread stay up for
    # their whole scale-down wait. Once an answer there has been measured, they count.
    router = _scaling_fleet(Clock())
    _in_flight(router, api=30)
    assert router.desired_instances("pool-a") == 0
    _measured(router, "api")
    assert router.desired_instances("pool-a") == 4


def test_demand_past_paid_capacity_asks_only_the_cheapest_pool_to_grow() -> None:
    router = _scaling_fleet(Clock())
    # A slot decodes 100 tokens/s (TPOT 10 ms): 4 running on the reserved instance and 6 at
    # the API ask for 1,000 tokens/s. The reserved instance serves 320 at its target fill,
    # each pool instance the same: two full ones and a third whose 40 tokens/s would cost
    # more at the API's $400/1M than the instance's $2/hour.
    _measured(router, "reserved", "api")
    _in_flight(router, reserved=4, api=6)
    wanted = {n: router.desired_instances(n) for n in ("pool-a", "pool-b", "reserved")}
    assert wanted == {"pool-a": 3, "pool-b": 0, "reserved": 1}


def test_a_pool_at_its_ceiling_passes_the_rest_to_the_next() -> None:
    router = _scaling_fleet(Clock(), max_instances=1)
    _measured(router, "reserved", "api")
    _in_flight(router, reserved=4, api=6)
    assert router.desired_instances("pool-a") == 1
    assert router.desired_instances("pool-b") == 2


def test_a_partly_filled_instance_is_asked_for_only_when_it_costs_less_than_the_api() -> None:
    # pool-a costs $1.74/1M filled; the API $3/1M: a partly filled instance ($2/hour) pays
    # from 185 tokens/s on.
    router = _scaling_fleet(Clock(), api_usd_per_mtok=3.0)
    _measured(router, "reserved", "api")
    _in_flight(router, reserved=4, api=1)  # 180 tokens/s past the reserved instance
    assert router.desired_instances("pool-a") == 0
    _in_flight(router, api=1)  # 280
    assert router.desired_instances("pool-a") == 1
    assert router.desired_instances("pool-b") == 0


def test_without_discovery_the_pool_count_follows_what_was_asked() -> None:
    clock = Clock()
    pool = {"billing": "elastic", "min_instances": 0, "max_instances": 4, "scale_up_s": 60,
            "scale_down_s": 120}
    router, _ = _router([
        _config("pool", price={"usd_per_hour": 2.0}, capacity=PRIOR, pool=pool),
        _config("api", price={"usd_per_mtok_output": 400.0}, capacity=PRIOR),
    ], clock)
    router.observe_load("pool", LoadSnapshot(healthy=False))
    assert router.billed_instances("pool") == 0
    _measured(router, "api")
    _in_flight(router, api=20)
    assert router.desired_instances("pool") == 4
    assert router.billed_instances("pool") == 4  # billed from the ask, serving a boot later
    assert router.pool("pool").ready == 0
    clock.now += 61
    router.desired_instances("pool")
    assert router.pool("pool").ready == 4
    assert router.billed_instances("api") is None


def test_a_small_share_of_requests_measures_a_backend_that_has_gone_unmeasured() -> None:
    clock = Clock()
    router, _ = _router([
        _config("cheap", price={"usd_per_hour": 1.0}, capacity={**PRIOR, "max_concurrency": 99}),
        _elastic("never", 8.0, PRIOR),  # up, never used: its price is only a prior
        _config("api", price={"usd_per_mtok_output": 50.0}, capacity=PRIOR),  # exact: no need
    ], clock)
    _up(router, "never", 1)
    objectives = Objectives(max_ttft_s=1.0)
    firsts = [_first(router, objectives) for _ in range(5000)]
    assert 0.01 < firsts.count("never") / len(firsts) < 0.03
    router.attempt_started("never", retry=False)
    router.finished("never", ok=True, output_tokens=10, decode_s=0.1)
    assert {_first(router, objectives) for _ in range(1000)} == {"cheap"}  # fresh now; no API
    clock.now += 301
    assert "never" in {_first(router, objectives) for _ in range(1000)}  # stale again


def test_an_attempt_given_up_raises_the_ttft_prediction_and_counts_for_the_breaker() -> None:
    clock = Clock()
    router, _ = _router([_config("slow", capacity={"ttft_s": 0.1})], clock, breaker_failures=2)
    before = router.plan(router.backends, "latency", NO_OBJECTIVES, 1, 4)[0].ttft_s
    for _ in range(2):
        router.attempt_started("slow", retry=False)
        router.attempt_abandoned("slow", 0.4)  # waited 4x the prediction, no first token
    after = router.plan(router.backends, "latency", NO_OBJECTIVES, 1, 4)
    assert after == []  # two give-ups in a row opened the breaker
    clock.now += 11  # the cooldown passed: a half-open trial, predicted slower than before
    assert router.plan(router.backends, "latency", NO_OBJECTIVES, 1, 4)[0].ttft_s > before


def test_the_scaling_signal_leads_with_arrivals_before_the_work_in_flight_shows_them() -> None:
    clock = Clock()
    router = _scaling_fleet(clock)
    assert router.desired_instances("pool-a") == 0
    # 2 requests/s capped at 512 tokens (planned at half the cap until an answer has ended):
    # 512 tokens/s arriving, none started yet
    # (Little's law sees nothing): past the reserved instance's 320, one pool instance.
    for _ in range(20):
        router.plan(router.backends, "cost", Objectives(), 100, 512)
        clock.now += 0.5
    assert router.desired_instances("pool-a") == 1


def test_the_first_answer_to_end_does_not_reprice_the_demand_already_arrived() -> None:
    """Each arrival counts at the length known when it came: half its cap before any answer
    ended, the answers' typical length after. Learning the length must not make the demand
    that arrived before it jump (it did: every earlier arrival was read again at its full cap),
    or the pools are asked for instances that their scale-down window then keeps for minutes."""
    clock = Clock()
    router = _scaling_fleet(clock)
    for _ in range(20):  # 2 requests/s, capped at 512 tokens: 512 tokens/s planned
        router.plan(router.backends, "cost", Objectives(), 100, 512)
        clock.now += 0.5
    names = frozenset(b.name for b in router.backends)
    before = router._offered(names)
    router.attempt_started("pool-a", retry=False)
    router.first_token("pool-a", 0.1)
    router.finished("pool-a", ok=True, output_tokens=128, decode_s=5.0)  # the first answer
    assert router._offered(names) == pytest.approx(before)
    for _ in range(120):  # a minute later, arrivals are planned at what answers run to
        router.plan(router.backends, "cost", Objectives(), 100, 512)
        clock.now += 0.5
    assert router._offered(names) == pytest.approx(2 * 128, rel=0.05)


def test_a_request_sent_past_an_unconfirmed_slot_count_that_waited_confirms_it() -> None:
    clock = Clock()
    router, _ = _router([_config("only", price={"usd_per_hour": 1.0}, capacity=PRIOR)], clock)
    router.observe_load("only", LoadSnapshot(healthy=True, running=0, waiting=0))
    pool = router.pool("only")
    assert not pool.confirmed
    for _ in range(5):  # the fifth goes past the 4 slots believed in
        router.attempt_started("only", retry=False)
    for _ in range(4):
        router.first_token("only", 0.1)
    assert not pool.confirmed
    router.first_token("only", 2.0)  # it waited for a slot
    assert pool.confirmed
