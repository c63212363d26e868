"""The Kubernetes manifests, validated offline: each overlay renders with ``kubectl kustomize``,
every object validates against the Kubernetes schemas, and what they name exists here."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.cli import main as tollgate_main
from gateway.settings import EngineSettings, parse_settings
from gateway.telemetry import semconv as sc

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"
KUBERNETES = "1.32.0"  # GKE's regular channel at the time of writing
# Custom resources have no schema in kubernetes-validate; their shape is checked here instead.
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor")}

pytestmark = pytest.mark.timeout(60)


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (its kustomize renders the overlays)")
    done = subprocess.run(
        [kubectl, "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] == "Deployment":
            for container in obj["spec"]["template"]["spec"]["containers"]:
                yield obj["metadata"]["name"], container


@pytest.fixture(params=sorted(p.name for p in OVERLAYS.iterdir()))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: list[dict[str, Any]],
) -> None:
    kinds = set()
    for obj in rendered:
        kinds.add(obj["kind"])
        if (obj["apiVersion"], obj["kind"]) in CUSTOM:
            assert obj["metadata"]["name"] and obj["spec"]["endpoints"]
            continue
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "ConfigMap", "ServiceMonitor", "Role"} <= kinds  # fmt: skip


def test_tollgate_containers_run_real_commands_of_the_image(
    rendered: list[dict[str, Any]],
) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    ours = [(name, c) for name, c in containers(rendered) if c["image"].startswith("tollgate:")]
    assert {name for name, _ in ours} == {"tollgate-gateway", "tollgate-engine"}
    for _, container in ours:
        command = container["command"]
        assert command[0] == "tollgate"  # the image's console script (pip install . above)
        with pytest.raises(SystemExit) as exited:
            tollgate_main([*command[1:], "--help"])
        assert exited.value.code == 0, command
    assert "useradd --system --uid 10001" in dockerfile  # the runAsUser below


def test_pods_are_hardened_and_sized(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in pod["containers"]:
            assert container["resources"]["requests"], container["name"]
            if container["image"].startswith(("tollgate:", "redis:")):
                assert pod["securityContext"]["runAsNonRoot"] is True
                assert container["securityContext"]["readOnlyRootFilesystem"] is True
                assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_gateway_drains_before_it_is_killed_and_probes_its_own_routes(
    rendered: list[dict[str, Any]],
) -> None:
    configs = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "ConfigMap"}
    (config,) = [c for name, c in configs.items() if name.startswith("tollgate-config")]
    settings = parse_settings(yaml.safe_load(config["data"]["tollgate.yaml"]), env={})
    EngineSettings(**yaml.safe_load(config["data"]["engine.yaml"])["engine"])
    (gateway,) = [o for o in rendered if o["metadata"]["name"] == "tollgate-gateway"
                  and o["kind"] == "Deployment"]  # fmt: skip
    pod = gateway["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= settings.server.drain_timeout_s + pause
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (engine,) = [c for name, c in containers(rendered) if name == "tollgate-engine"]
    assert engine["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_pools_scale_on_the_signal_the_router_exports(rendered: list[dict[str, Any]]) -> None:
    configs = [o for o in rendered if o["kind"] == "ConfigMap"]
    settings = parse_settings(yaml.safe_load(configs[0]["data"]["tollgate.yaml"]), env={})
    exported = sc.METRIC_POOL_DESIRED.replace(".", "_")
    elastic = {b.name for b in settings.backends if b.pool.billing == "elastic"}
    scaled = set()
    for hpa in (o for o in rendered if o["kind"] == "HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "External":
                assert metric["external"]["metric"]["name"] == exported
                scaled.add(metric["external"]["metric"]["selector"]["matchLabels"]["tollgate_backend"])
                assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    assert scaled and scaled <= elastic
    services = {o["metadata"]["name"] for o in rendered if o["kind"] == "Service"}
    for backend in settings.backends:
        discovery = backend.pool.discovery
        if discovery and discovery.startswith("k8s://"):
            namespace, service = discovery.removeprefix("k8s://").split("/")
            assert namespace == "tollgate" and service in services
