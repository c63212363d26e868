"""The pool view: instance counts and the slot count learned from a backend's own metrics."""

from __future__ import annotations

import pytest

from adapters.base import LoadSnapshot
from gateway.routing.pool import PoolState
from gateway.settings import PoolSettings

pytestmark = pytest.mark.timeout(10)

RESERVED = PoolSettings(billing="reserved", instances=2)


def _probe(pool: PoolState, running: int, waiting: int, times: int = 1) -> None:
    for _ in range(times):
        pool.observe_load(LoadSnapshot(healthy=True, running=running, waiting=waiting), 0)


def test_a_prior_that_overstates_the_slots_is_corrected_by_a_lasting_queue() -> None:
    pool = PoolState(RESERVED, prior_slots=256)
    _probe(pool, running=256, waiting=40)  # one probe is not yet enough
    assert pool.slots_per_instance == 256 and not pool.confirmed
    _probe(pool, running=256, waiting=40)
    assert pool.slots_per_instance == 128 and pool.confirmed
    assert pool.slots == pool.planned_slots == 256


def test_a_queue_that_waits_for_the_next_step_does_not_lower_the_count() -> None:
    pool = PoolState(RESERVED, prior_slots=256)
    for running in (300, 301, 299, 305, 302):  # busy, one step's arrivals waiting
        pool.observe_load(LoadSnapshot(healthy=True, running=running, waiting=6), 0,
                          arrivals_per_step=3.0)
    assert pool.slots_per_instance == 256 and not pool.confirmed


def test_at_a_low_rate_one_waiter_at_a_full_instance_corrects_the_count() -> None:
    # One instance, 60 slots typed, 32 real: at a request a second the queue is one deep.
    pool = PoolState(PoolSettings(billing="reserved", instances=1), prior_slots=60)
    for _ in range(2):
        pool.observe_load(LoadSnapshot(healthy=True, running=32, waiting=1), 0,
                          arrivals_per_step=0.04)
    assert pool.slots_per_instance == 32 and pool.confirmed


def test_one_waiter_across_two_instances_is_not_a_full_pool() -> None:
    pool = PoolState(RESERVED, prior_slots=60)
    _probe(pool, running=64, waiting=1, times=3)
    assert pool.slots_per_instance == 60 and not pool.confirmed


def test_a_queue_below_one_waiter_an_instance_still_shows_a_full_pool() -> None:
    # 17 instances typed at 31 slots, 16 real: every slot taken, the queue drains into slots
    # as they free and stands at 9 on one probe, 15 on the next.
    pool = PoolState(PoolSettings(billing="reserved", instances=17), prior_slots=31)
    for waiting in (9, 15):
        pool.observe_load(LoadSnapshot(healthy=True, running=272, waiting=waiting), 0,
                          arrivals_per_step=1.0)
    assert pool.slots_per_instance == 16 and pool.confirmed


def test_a_prior_that_understates_the_slots_is_raised_by_what_runs() -> None:
    pool = PoolState(RESERVED, prior_slots=64)
    assert pool.planned_slots > pool.slots  # an unconfirmed count is probed past
    _probe(pool, running=200, waiting=0)
    assert pool.slots_per_instance == 100


def test_jetstream_slots_come_from_its_used_share() -> None:
    one = PoolSettings(billing="reserved", instances=1)
    pool = PoolState(one, prior_slots=32, kind="jetstream")
    pool.observe_load(LoadSnapshot(healthy=True, waiting=0, kv_usage=0.25), in_flight=24)
    assert pool.slots_per_instance == 96


def test_an_elastic_pool_without_discovery_counts_nothing_ready_when_its_probe_fails() -> None:
    pool = PoolState(PoolSettings(billing="elastic", min_instances=0, max_instances=8),
                     prior_slots=16)
    pool.observe_load(LoadSnapshot(healthy=False), 0)
    assert pool.ready == 0 and pool.billed_instances() == 0
    pool.observe_instances(ready=2, up=3)
    assert (pool.ready, pool.billed_instances(), pool.slots) == (2, 3, 32)


def test_a_queue_while_running_still_rises_is_a_backlog_being_admitted_not_full_slots() -> None:
    pool = PoolState(RESERVED, prior_slots=256)
    for running in (40, 180, 330):  # instances just up, a burst's prefills under way
        pool.observe_load(LoadSnapshot(healthy=True, running=running, waiting=60), 0)
    assert pool.slots_per_instance == 256 and not pool.confirmed


def test_a_request_sent_past_the_slots_that_waited_for_one_confirms_the_count() -> None:
    pool = PoolState(RESERVED, prior_slots=64)
    assert pool.planned_slots > pool.slots
    pool.saw_full()
    assert pool.confirmed and pool.planned_slots == pool.slots == 128


def test_a_scale_down_cancels_the_newest_boots_first() -> None:
    clock = [0.0]
    pool = PoolState(PoolSettings(billing="elastic", min_instances=0, max_instances=8,
                                  scale_up_s=100, scale_down_s=10), prior_slots=16,
                     clock=lambda: clock[0])
    pool.asked(3)  # ready at 100
    clock[0] = 20.0
    pool.asked(6)  # three more, ready at 120
    clock[0] = 30.0
    pool.asked(2)
    clock[0] = 41.0
    pool.asked(2)  # the surplus has lasted scale_down_s: two kept, both from the first ask
    assert pool.up == 2
    clock[0] = 50.0
    pool.asked(5)  # three more, ready at 150: the cancelled boots come up never
    clock[0] = 121.0
    pool.asked(5)
    assert pool.ready == 2 and pool.up == 5
    clock[0] = 151.0
    pool.asked(5)
    assert pool.ready == 5


def test_an_unset_target_fills_a_pool_more_the_more_it_carries() -> None:
    pool = PoolState(PoolSettings(billing="elastic", max_instances=8), prior_slots=32)
    one = pool.fill(0)  # priced on the instance it would add: one instance's worth of load
    assert 0.78 < one < 0.80  # 32 slots, 1.5 x sqrt(32) of them kept free
    assert pool.fill(10) == one  # never planned below one instance's worth
    assert one < pool.fill(256) < pool.fill(1000) < 1.0
    assert pool.fill(1000) > 0.95


def test_an_operator_target_is_the_fill_whatever_the_load() -> None:
    settings = PoolSettings(billing="elastic", max_instances=8, target_utilisation=0.7)
    pool = PoolState(settings, prior_slots=32)
    assert pool.fill(0) == pool.fill(5000) == 0.7
