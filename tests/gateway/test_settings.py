"""Configuration: validation with field paths, env overrides, and the shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.cli import config_problems, main
from gateway.settings import BackendSettings, PoolSettings, load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]


def test_default_config_is_valid() -> None:
    settings = load_settings(ROOT / "config" / "tollgate.yaml")
    assert settings.backends[0].kind == "embedded"
    assert settings.store.redis_url is None


def test_env_overrides_secrets_and_urls() -> None:
    settings = parse_settings(
        {}, env={"TOLLGATE_REDIS_URL": "redis://127.0.0.1:6379/3", "TOLLGATE_ADMIN_KEY": "k"}
    )
    assert settings.store.redis_url == "redis://127.0.0.1:6379/3"
    assert settings.admin_key == "k"


def test_unknown_keys_and_inconsistencies_are_errors() -> None:
    with pytest.raises(ValidationError, match="serves 'm'"):
        parse_settings(
            {"backends": [{"name": "a", "kind": "vllm", "url": "http://x", "models": {"m": "m"},
                           "price": {"usd_per_hour": 1}}]},
            env={},
        )
    with pytest.raises(ValidationError, match="Extra inputs"):
        parse_settings({"server": {"prot": 1}}, env={})


def test_check_config_reports_every_problem_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "server:\n  port: -1\nrouting:\n  default_policy: cheapest\n"
        "backends:\n  - name: a\n    kind: tgi\n    url: http://x\n    models: {m: m}\n"
        "    price: {usd_per_hour: 1, usd_per_mtok_input: 2}\n"
    )
    problems = config_problems(str(bad))
    paths = [p.split(":")[0] for p in problems]
    assert paths == ["server.port", "backends[0].price", "routing.default_policy"]
    assert main(["check-config", str(bad)]) == 1
    assert "server.port" in capsys.readouterr().out
    assert main(["check-config", str(ROOT / "config" / "tollgate.yaml")]) == 0
    assert config_problems(str(tmp_path / "missing.yaml"))[0].startswith("cannot read")


def test_a_fleet_file_with_scaling_in_its_simulate_block_gets_a_production_pool() -> None:
    legacy = BackendSettings.model_validate({
        "name": "gpu", "kind": "vllm", "url": "http://x", "models": {"m": "m"},
        "price": {"usd_per_hour": 2.0},
        "simulate": {"slots": 8, "prefill_tokens_per_s": 1000, "decode_step_s": {1: 0.01},
                     "always_on": False, "min_instances": 1, "max_instances": 6,
                     "scale_up_s": 45, "scale_down_idle_s": 90},
    })
    assert legacy.pool.billing == "elastic"
    assert (legacy.pool.min_instances, legacy.pool.max_instances) == (1, 6)
    assert (legacy.pool.scale_up_s, legacy.pool.scale_down_s) == (45, 90)
    assert legacy.pool.sunk_instances == 1


def test_pool_discovery_must_name_dns_or_kubernetes() -> None:
    assert PoolSettings(discovery="k8s://inference/vllm").discovery == "k8s://inference/vllm"
    with pytest.raises(ValidationError, match="dns://name:port"):
        PoolSettings(discovery="http://pool")
