"""A short run of the fleet simulator: it drives the Router and writes its chart."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import fleet_sim
from bench.fleet.run import simulate
from gateway.settings import load_settings


@pytest.mark.timeout(30)
def test_smoke_run_prints_the_table_and_writes_a_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = fleet_sim.main(["--rates", "2,8", "--duration", "40", "--warmup", "10",
                           "--workload", "fixed", "--policies", "cost,round-robin",
                           "--jobs", "1", "--out", str(tmp_path / "fleet")])
    assert code == 0
    out = capsys.readouterr().out
    assert "out tok/$" in out and "round-robin" in out
    png = (tmp_path / "fleet-fixed.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


@pytest.mark.timeout(30)
def test_cost_policy_fills_the_reserved_tpu_first() -> None:
    settings = load_settings(fleet_sim.DEFAULT_FLEET)
    result = simulate(settings, "cost", 1.0, duration_s=60, warmup_s=10, mixed=False)
    assert result.share["jetstream-v5e8"] > 0.9
    assert result.slo_attainment > 0.95
