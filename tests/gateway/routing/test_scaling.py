"""The allocation behind the autoscaling signal."""

from __future__ import annotations

import pytest

from gateway.routing.scaling import ARRIVAL_WINDOW_S, ArrivalRate, Offer, allocate

pytestmark = pytest.mark.timeout(10)


def _pool(name: str, usd_per_token: float, *, tokens_per_s: float = 1000.0, sunk: int = 0,
          up: int = 0, max_instances: int = 10) -> Offer:
    return Offer(name, False, usd_per_token, tokens_per_s=tokens_per_s,
                 usd_per_instance_s=usd_per_token * tokens_per_s, sunk_instances=sunk,
                 max_instances=max_instances, up_instances=up, elastic=True)


API = Offer("api", True, 5e-6)
SPILLING = Offer("api", True, 5e-6, carrying_tokens_per_s=5000)  # the API carries a gap now


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


def _booting(name: str, usd_per_token: float, *, boot_s: float, ready: int = 0,
             booting_s: tuple[float, ...] = (), tokens_per_s: float = 1000.0,
             scale_down_s: float = 60.0) -> Offer:
    return Offer(name, False, usd_per_token, tokens_per_s=tokens_per_s,
                 usd_per_instance_s=usd_per_token * tokens_per_s, max_instances=10,
                 up_instances=ready + len(booting_s), elastic=True, ready_instances=ready,
                 booting_s=booting_s, scale_up_s=boot_s, scale_down_s=scale_down_s)


def test_a_quick_booting_pool_bridges_until_the_cheap_slow_one_serves() -> None:
    # The cheap pool's two instances serve in 150 s; the dear one boots in 30 s at $2/M,
    # well under the API's $5/M for the 120 s between: it carries the gap meanwhile.
    slow = _booting("slow", 1e-6, boot_s=150, booting_s=(150.0, 150.0))
    quick = _booting("quick", 2e-6, boot_s=30)
    assert allocate(2000, [slow, quick, SPILLING]) == {"slow": 2, "quick": 2}
    # Once the cheap instances serve, nothing is bridged.
    served = _booting("slow", 1e-6, boot_s=150, ready=2)
    assert allocate(2000, [served, quick, SPILLING]) == {"slow": 2, "quick": 0}


def test_a_gap_only_the_estimates_predict_is_not_bridged() -> None:
    # Nothing spills to the API: the capacity already serving carries the load, whatever the
    # plan's figures say; a bridge is sized to what does spill.
    slow = _booting("slow", 1e-6, boot_s=150, booting_s=(150.0, 150.0))
    quick = _booting("quick", 2e-6, boot_s=30)
    assert allocate(2000, [slow, quick, API]) == {"slow": 2, "quick": 0}
    some = Offer("api", True, 5e-6, carrying_tokens_per_s=900)
    assert allocate(2000, [slow, quick, some]) == {"slow": 2, "quick": 1}


def test_no_bridge_where_the_gap_is_too_short_to_pay_for_a_boot() -> None:
    # Ready in 40 s: a quick instance would serve 10 s, paid for 30 + 10 + 60 s.
    slow = _booting("slow", 1e-6, boot_s=150, booting_s=(40.0, 40.0))
    quick = _booting("quick", 2e-6, boot_s=30)
    assert allocate(2000, [slow, quick, SPILLING]) == {"slow": 2, "quick": 0}


def test_a_bridge_serving_is_evidence_of_its_gap_a_surplus_is_not() -> None:
    # Two quick instances serve as the bridge asked for earlier: nothing spills to the API
    # because they carry it, so they are kept until the cheap pool serves.
    slow = _booting("slow", 1e-6, boot_s=150, booting_s=(100.0, 100.0))
    bridging = Offer("quick", False, 2e-6, tokens_per_s=1000.0, usd_per_instance_s=2e-3,
                     max_instances=10, up_instances=2, elastic=True, ready_instances=2,
                     scale_up_s=30, scale_down_s=60, bridging=2)
    assert allocate(2000, [slow, bridging, API]) == {"slow": 2, "quick": 2}
    # The same two instances up as a surplus (not a bridge): no gap shows, none is kept.
    surplus = Offer("quick", False, 2e-6, tokens_per_s=1000.0, usd_per_instance_s=2e-3,
                    max_instances=10, up_instances=2, elastic=True, ready_instances=2,
                    scale_up_s=30, scale_down_s=60)
    assert allocate(2000, [slow, surplus, API]) == {"slow": 2, "quick": 0}


def test_a_bridge_counts_its_own_instances_already_booting() -> None:
    slow = _booting("slow", 1e-6, boot_s=150, booting_s=(120.0, 120.0))
    quick = _booting("quick", 2e-6, boot_s=30, booting_s=(10.0,))
    # The wanted count is a total: the quick instance on its way and one more.
    assert allocate(2000, [slow, quick, SPILLING]) == {"slow": 2, "quick": 2}
