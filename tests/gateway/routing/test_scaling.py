"""The allocation behind the autoscaling signal."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from gateway.routing.scaling import ARRIVAL_WINDOW_S, ArrivalRate, Offer, allocate

pytestmark = pytest.mark.timeout(10)


def _pool(name: str, usd_per_token: float, *, tokens_per_s: float = 1000.0, sunk: int = 0,
          up: int = 0, max_instances: int = 10) -> Offer:
    return Offer(name, False, usd_per_token, tokens_per_s=tokens_per_s,
                 usd_per_instance_s=usd_per_token * tokens_per_s, sunk_instances=sunk,
                 max_instances=max_instances, up_instances=up, elastic=True)


API = Offer("api", True, 5e-6)


def _unmeasured(offer: Offer, *, boot_s: float = 120.0, scale_down_s: float = 120.0) -> Offer:
    return replace(offer, measured=False, boot_s=boot_s, scale_down_s=scale_down_s)


def test_an_unmeasured_pool_is_booted_for_its_prior_slow_end_as_far_as_the_api_makes_it_pay(
) -> None:
    # 4,000 tokens/s on a prior of 1,000 an instance: four if the prior is right. It may be
    # off 2x either way until the pool serves. An API 50x dearer: each instance short costs
    # 49 instance-prices for a 120 s boot, one too many its boot and 120 s scale-down wait,
    # so plan for the 96th percentile of the count (a speed of 0.53x the prior): 8.
    dear = Offer("api", True, 5e-5)
    pool = _unmeasured(_pool("gpu", 1e-6))
    assert allocate(4000, [pool, dear]) == {"gpu": 8}
    # Measured, or with an API barely dearer, or instant boots: the prior as typed.
    assert allocate(4000, [replace(pool, measured=True), dear]) == {"gpu": 4}
    assert allocate(4000, [pool, Offer("api", True, 1.5e-6)]) == {"gpu": 4}
    assert allocate(4000, [replace(pool, boot_s=0.0), dear]) == {"gpu": 4}


def test_the_hedge_on_a_pool_at_its_ceiling_does_not_spill_to_the_next() -> None:
    # The prior's 4 x 1,000 covers the demand: the next pool is not booted for the hedge.
    capped = _unmeasured(_pool("tpu", 1e-6, max_instances=4))
    offers = [capped, _pool("gpu", 2e-6), Offer("api", True, 5e-5)]
    assert allocate(4000, offers) == {"tpu": 4, "gpu": 0}


def test_instances_are_shed_only_as_far_as_the_batch_on_them_has_been_measured() -> None:
    # Ten instances up for 2,000 tokens/s: the decode line says one serves 1,000 at the
    # target fill, but answers were measured only at batches small enough that, within
    # twice them, one serves 400. Five are kept, not two; once the larger batch on those has
    # been measured, the next shed goes further.
    up = replace(_pool("gpu", 1e-6, up=10), kept_tokens_per_s=400.0)
    assert allocate(2000, [up, API]) == {"gpu": 5}
    assert allocate(2000, [replace(up, kept_tokens_per_s=math.inf), API]) == {"gpu": 2}
    # Nothing is booted for it: a pool with fewer up is grown on the decode line as it is.
    assert allocate(2000, [replace(up, up_instances=0), API]) == {"gpu": 2}


def test_paid_for_capacity_is_used_before_any_pool_grows() -> None:
    reserved = Offer("tpu", False, 1e-7, tokens_per_s=3000, sunk_instances=1, max_instances=1)
    assert allocate(2500, [reserved, _pool("gpu", 1e-6), API]) == {"tpu": 1, "gpu": 0}


def test_the_cheapest_pool_takes_the_demand_and_a_partial_instance_only_when_it_pays() -> None:
    offers = [_pool("cheap", 1e-6), _pool("dear", 2e-6), API]
    # 2,500 tokens/s: two full instances; the last 500 tokens/s at the API cost $2.5e-3/s,
    # more than half an instance's $1e-3/s: a third instance is worth it.
    assert allocate(2500, offers) == {"cheap": 3, "dear": 0}
    # 2,100 tokens/s: the last 100 tokens/s cost $5e-4/s at the API, less than an instance.
    assert allocate(2100, offers) == {"cheap": 2, "dear": 0}


def test_a_pool_dearer_than_the_api_is_never_grown() -> None:
    assert allocate(5000, [_pool("dear", 9e-6), API]) == {"dear": 0}


def test_instances_already_up_are_kept_unless_another_pool_is_clearly_cheaper() -> None:
    near = [_pool("up", 1.1e-6, up=2), _pool("new", 1e-6), API]
    assert allocate(2000, near) == {"up": 2, "new": 0}
    far = [_pool("up", 2e-6, up=2), _pool("new", 1e-6), API]
    assert allocate(2000, far) == {"up": 0, "new": 2}


def test_near_priced_pools_up_beyond_the_demand_shed_alike_whichever_looks_cheaper() -> None:
    # 3,000 tokens/s over 6 instances up on two pools priced within measurement noise: each
    # keeps half, and swapping which one reads cheaper does not move the counts.
    a, b = _pool("a", 1.00e-6, up=4), _pool("b", 1.02e-6, up=2)
    assert allocate(3000, [a, b, API]) == {"a": 2, "b": 1}
    a, b = _pool("a", 1.02e-6, up=4), _pool("b", 1.00e-6, up=2)
    assert allocate(3000, [a, b, API]) == {"a": 2, "b": 1}


def test_without_an_api_every_token_needs_an_instance() -> None:
    assert allocate(2100, [_pool("only", 1e-6)]) == {"only": 3}


def test_a_remainder_goes_to_the_pool_that_serves_it_cheapest_not_the_cheapest_when_full() -> None:
    big = _pool("big", 1e-6, tokens_per_s=10_000)  # $0.01/s an instance
    small = _pool("small", 2e-6, tokens_per_s=500)  # $0.001/s an instance
    # 800 tokens/s: one big instance costs $0.01/s, two small ones $0.002/s.
    assert allocate(800, [big, small, API]) == {"big": 0, "small": 2}
    # 9,000 tokens/s: the big pool, cheapest when full, is worth its one instance.
    assert allocate(9000, [big, small, API]) == {"big": 1, "small": 0}


def test_the_arrival_rate_reads_a_load_within_seconds_of_its_start_and_then_decays() -> None:
    rate = ArrivalRate()
    assert rate.per_s(0.0) == 0.0
    for i in range(50):  # 10 requests/s for 5 s
        rate.add(100.0 + i / 10)
    assert 9.0 < rate.per_s(105.0) < 11.0
    assert rate.per_s(105.0 + 3 * ARRIVAL_WINDOW_S) < 1.0  # nothing arrived since
