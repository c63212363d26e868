"""The compose stack as files: valid against the Compose Specification, and complete.

No Docker engine runs here, so the test checks what can be checked without one: the schema,
every mounted file and every Dockerfile COPY source present, the image's command a real
console script, the configs it mounts well-formed and consistent with each other.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.cli import main as tollgate_main
from gateway.cli_engine import engine_settings
from gateway.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    if not SCHEMA.exists():
        pytest.skip(f"the Compose Specification schema is not at {SCHEMA}")
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)  # the schema declares draft-07
    validator.validate(compose())
    broken = {**compose(), "services": {"gateway": {"image": "x", "restart_policy": "always"}}}
    assert not validator.is_valid(broken)  # the schema does catch a misspelt key


def test_stack_has_the_gateway_redis_with_aof_and_the_observability_services() -> None:
    services = compose()["services"]
    assert {"gateway", "redis", "otel-collector", "prometheus", "tempo", "grafana"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    assert services["vllm"]["profiles"] == ["gpu"]
    assert services["engine"]["profiles"] == ["engine"]
    assert "build" in services["gateway"]


def test_every_mounted_file_exists() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_every_dockerfile_copy_source_exists_and_the_command_is_tollgate_serve() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+)$", dockerfile, re.M)
    assert copies
    for line in copies:
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"
    cmd = json.loads(re.findall(r"^CMD\s+(.+)$", dockerfile, re.M)[-1])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert cmd[:2] == ["tollgate", "serve"] and cmd[0] in scripts
    with pytest.raises(SystemExit) as exited:  # `serve` is a real subcommand with these flags
        tollgate_main([*cmd[1:], "--help"])
    assert exited.value.code == 0
    for service in compose()["services"].values():
        command = service.get("command", [""])
        if command[0] == "tollgate":  # `serve` or `engine serve`, with flags that parse
            with pytest.raises(SystemExit) as exited:
                tollgate_main([*command[1:], "--help"])
            assert exited.value.code == 0, command


def test_the_image_installs_dependencies_before_it_copies_code() -> None:
    """Editing code must not invalidate the dependency layer (Docker caches layer by layer)."""
    lines = [ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.strip()]
    installs = next(i for i, ln in enumerate(lines) if "pip install -r" in ln)
    copies = [i for i, ln in enumerate(lines) if ln.startswith("COPY ")]
    before = [lines[i] for i in copies if i < installs]
    assert before == ["COPY pyproject.toml README.md ./"]
    assert any("pip install --no-deps ." in ln for ln in lines[installs + 1 :])


def test_configs_the_stack_uses_are_well_formed() -> None:
    for path in ("config/compose/fleet.yaml", "config/tollgate.yaml"):
        load_settings(ROOT / path)
    engine_settings(str(ROOT / "config/compose/engine.yaml"), {})  # `tollgate engine serve`'s
    collector = yaml.safe_load((ROOT / "config/otel/collector.yaml").read_text())
    for pipeline in collector["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(kind, [])) <= set(collector.get(kind, {}))
    yaml.safe_load((ROOT / "config/otel/tempo.yaml").read_text())
    promtool = shutil.which("promtool")
    if promtool:
        checked = subprocess.run(
            [promtool, "check", "config", str(ROOT / "config/prometheus/prometheus.yml")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_provisioning_matches_the_dashboards() -> None:
    grafana = ROOT / "config/grafana"
    sources = yaml.safe_load((grafana / "provisioning/datasources/datasources.yaml").read_text())
    uids = {d["uid"] for d in sources["datasources"]}
    prometheus = next(d for d in sources["datasources"] if d["type"] == "prometheus")
    assert prometheus["jsonData"]["exemplarTraceIdDestinations"][0]["datasourceUid"] in uids
    providers = yaml.safe_load((grafana / "provisioning/dashboards/dashboards.yaml").read_text())
    mounted = {v.split(":")[1] for v in compose()["services"]["grafana"]["volumes"]}
    assert providers["providers"][0]["options"]["path"] in mounted
    titles = set()
    for path in (grafana / "dashboards").glob("*.json"):
        board = json.loads(path.read_text())
        titles.add(board["title"])
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] in uids, (path.name, panel["title"])
    assert {"Tollgate / Fleet", "Tollgate / Tenants"} <= titles
