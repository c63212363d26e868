"""Discovery: a DNS name's addresses and a Service's EndpointSlices, counted for routing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from adapters.base import LoadSnapshot
from gateway.routing.discovery import KubernetesDiscovery, count_slices, discovery_for
from gateway.routing.router import Router
from gateway.settings import BackendSettings, RoutingSettings
from tests.gateway.doubles import ScriptedBackend

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


def _slice(*endpoints: tuple[str, bool | None]) -> dict[str, Any]:
    return {"endpoints": [
        {"addresses": [address], "conditions": {} if ready is None else {"ready": ready}}
        for address, ready in endpoints
    ]}


def test_endpoint_slices_count_ready_and_listed_addresses_once() -> None:
    listing = {"items": [
        _slice(("10.0.0.1", True), ("10.0.0.2", None), ("10.0.0.3", False)),
        _slice(("10.0.0.1", True), ("10.0.0.4", False)),  # a dual-stack twin lists .1 again
    ]}
    found = count_slices(listing)
    assert (found.ready, found.up) == (2, 4)


def test_a_discovery_spec_names_dns_or_kubernetes() -> None:
    assert discovery_for("dns://pool.internal:8000").endpoints
    assert discovery_for("k8s://inference/vllm").endpoints
    with pytest.raises(ValueError, match="dns://"):
        discovery_for("consul://pool")


async def test_kubernetes_discovery_reads_the_services_slices_with_its_token(
    tmp_path: Path,
) -> None:
    seen: list[web.Request] = []

    async def slices(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"items": [_slice(("10.1.0.1", True), ("10.1.0.2", False))]})

    app = web.Application()
    app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/inference/endpointslices", slices)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    (tmp_path / "token").write_text("sa-token\n")
    discovery = KubernetesDiscovery("inference", "vllm", api_server=f"http://127.0.0.1:{port}",
                                    credentials=tmp_path)
    try:
        found = await discovery.endpoints()
    finally:
        await discovery.aclose()
        await runner.cleanup()
    assert (found.ready, found.up) == (1, 2)
    assert seen[0].headers["Authorization"] == "Bearer sa-token"
    assert seen[0].query["labelSelector"] == "kubernetes.io/service-name=vllm"


async def test_the_router_counts_a_pool_from_its_dns_name_on_each_probe() -> None:
    config = BackendSettings.model_validate({
        "name": "pool", "kind": "vllm", "url": "http://x", "models": {"m": "m"},
        "price": {"usd_per_hour": 2.0},
        "pool": {"billing": "elastic", "max_instances": 8, "discovery": "dns://localhost:80"},
    })
    backend = ScriptedBackend("pool", models=config.models)
    router = Router([backend], {"pool": config}, RoutingSettings())
    await router.probe_all()
    assert router.pool("pool").ready >= 1  # localhost: 127.0.0.1, and ::1 where configured
    assert router.billed_instances("pool") == router.pool("pool").up
    router.observe_load("pool", LoadSnapshot(healthy=True, running=0, waiting=0))
    await router.aclose()
