"""Short runs of the fleet simulator: it drives the Router, compares policies, writes charts."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import fleet_sim
from bench.fleet.fleets import random_fleet, random_settings
from bench.fleet.oracle import Oracle
from bench.fleet.run import simulate
from bench.fleet.workload import BURST_FACTOR, arrivals, bursts
from gateway.settings import load_settings

pytestmark = pytest.mark.timeout(60)


def test_smoke_run_prints_the_table_the_verdict_and_writes_a_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = fleet_sim.main(["--rates", "2,8", "--duration", "40", "--warmup", "10",
                           "--workload", "fixed", "--policies", "cost,round-robin",
                           "--jobs", "1", "--out", str(tmp_path / "fleet")])
    assert code == 0
    out = capsys.readouterr().out
    assert "out tok/$" in out and "round-robin" in out and "of the best other policy" in out
    from matplotlib.image import imread

    pixels = imread(tmp_path / "fleet-fixed.png")  # a readable PNG, as matplotlib drew it
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500
    assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[2])[::97]}) > 5  # not blank


def test_random_fleets_smoke_prints_the_distribution(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = fleet_sim.main(["--random", "2", "--rates", "4", "--duration", "40",
                           "--warmup", "10", "--jobs", "1", "--out", "",
                           "--dump", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "2 fleets x 2 workloads x 1 rates" in out
    assert "cost / oracle bound" in out and "bar " in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet-0.yaml", "fleet-1.yaml"]
    assert load_settings(tmp_path / "fleet-1.yaml") == random_settings(1)


def test_random_fleets_are_seeded_valid_and_varied() -> None:
    assert random_fleet(7) == random_fleet(7)
    fleets = [random_settings(seed) for seed in range(20)]
    billing = {b.pool.billing for s in fleets for b in s.backends if b.price.usd_per_hour}
    assert billing == {"reserved", "elastic"}
    assert all(any(b.price.usd_per_mtok_output for b in s.backends) for s in fleets)
    for s in fleets:  # priors are misstated, but never by more than 2x
        for b in s.backends:
            if b.simulate and b.price.usd_per_hour:
                assert 0.5 <= b.capacity.max_concurrency / b.simulate.slots <= 2.0 + 1e-9


def test_cost_policy_pays_for_nothing_past_the_paid_for_capacity_at_a_low_rate() -> None:
    settings = load_settings(fleet_sim.DEFAULT_FLEET)
    result = simulate(settings, "cost", 1.0, duration_s=60, warmup_s=10, mixed=False)
    # The reserved TPU and the warm vLLM instance are paid anyway: nothing else is needed.
    assert result.share["jetstream-v5e8"] + result.share["vllm-h100"] == pytest.approx(1.0)
    assert result.slo_attainment > 0.99


@pytest.mark.parametrize("rate", [4.0, 32.0])
def test_no_policy_beats_the_oracle(rate: float) -> None:
    settings = load_settings(fleet_sim.DEFAULT_FLEET)
    oracle = Oracle(settings, rate, duration_s=80, warmup_s=30, mixed=False)
    for policy in ("cost", "balanced", "round-robin"):
        result = simulate(settings, policy, rate, duration_s=80, warmup_s=30, mixed=False)
        bound = oracle.bound(result.slo_attainment)
        assert result.tokens_per_usd <= bound.tokens_per_usd * 1.001, policy


def test_bursty_arrivals_come_five_times_as_fast_inside_a_burst() -> None:
    duration = 600.0
    times = [r.arrival for r in arrivals(10.0, duration, mixed=False, seed=3, bursty=True)]
    spans = bursts(duration, 3)
    inside = sum(any(a <= t < b for a, b in spans) for t in times)
    burst_s = sum(b - a for a, b in spans)
    rate_in, rate_out = inside / burst_s, (len(times) - inside) / (duration - burst_s)
    assert rate_in / rate_out == pytest.approx(BURST_FACTOR, rel=0.2)


def test_a_duration_within_the_warm_up_is_refused_before_running(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        fleet_sim.main(["--duration", "120", "--rates", "4"])
    assert exited.value.code == 2
    assert "--duration (120s) must exceed --warmup (120s)" in capsys.readouterr().err
