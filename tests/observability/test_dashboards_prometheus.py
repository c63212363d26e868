"""Every dashboard query, evaluated by a real Prometheus scraping a live gateway under traffic."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.base import GenerationRequest, Unavailable
from gateway.app import create_app
from gateway.settings import Settings, TelemetrySettings, parse_settings
from gateway.telemetry import build_telemetry
from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.models import Limits
from tests.gateway.doubles import PerTokenMeter, Script, ScriptedBackend
from tests.gateway.telemetry.conftest import settings_for
from tests.live import LiveServer
from tests.observability.dashboards import Query, metric_names, queries, substitute

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

# Panels an operator cannot do without: they must show data after a little traffic.
CORE = (
    "Requests",
    "Time to first token",
    "Time per output token",
    "Request duration",
    "Tokens",
    "tokens",
    "$ per 1M",
    "Spend",
    "Tokens per dollar",
    "Instance bill",
)


def prometheus_binary() -> str:
    """The prometheus binary, installed from Debian when absent; skips only if that fails."""
    found = shutil.which("prometheus")
    if found:
        return found
    reason = "no apt-get"
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        steps = (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "prometheus"])
        for step in steps:
            done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=300)
            reason = done.stderr[-300:]
        found = shutil.which("prometheus")
    if not found:
        pytest.skip(f"the prometheus binary is absent and could not be installed: {reason}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Prometheus:
    """A Prometheus server on 127.0.0.1 with temporary storage, scraping one target each second."""

    def __init__(self, binary: str, target: str, workdir: Path) -> None:
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: tollgate\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def query(self, expr: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        body: dict[str, Any] = answer.json()
        return body

    def series(self, expr: str) -> list[dict[str, Any]]:
        body = self.query(expr)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def flaky(req: GenerationRequest) -> Script:
    """The cheap backend: refuses prompts that say so, so the router falls back."""
    if req.prompt and "refuse" in req.prompt:
        return Script(error_before=Unavailable("cheap is full"))
    return Script()


class HourlyMeter(PerTokenMeter):
    """Per-token prices for the requests, and an instance bill of $3.60/hour since the meter was
    made (the real meter integrates the router's instance count: tests/gateway/metering)."""

    def __init__(self) -> None:
        super().__init__()
        self.began = time.monotonic()

    def instance_usd(self) -> dict[str, float]:
        return {"cheap": (time.monotonic() - self.began) * 3.6 / 3600}


def fleet_settings() -> Settings:
    """The two per-token backends (``cheap`` first, so a refusal falls back to ``dear``) and
    routing objectives the latency panels draw. Objectives tight enough to bind made routing
    skip ``cheap`` on some runs, and then no fallback was ever counted (a flaky panel)."""
    data = settings_for(["cheap", "dear"]).model_dump(mode="json", exclude_unset=True)
    data["routing"] = {"max_ttft_ms": 60_000, "max_tpot_ms": 10_000}  # drawn, never binding
    return parse_settings(data, env={})


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[tuple[Prometheus, Callable[[], None]]]:
    binary = prometheus_binary()
    store = MemoryStore()
    keys = {"team-a": asyncio.run(store.create_key("team-a")).secret}

    async def limited() -> str:
        await store.create_tenant("team-b", Limits(requests_per_minute=2, monthly_budget_usd=5.0))
        return (await store.create_key("team-b")).secret

    keys["team-b"] = asyncio.run(limited())
    backends = [ScriptedBackend("cheap", script=flaky), ScriptedBackend("dear")]
    app = create_app(
        fleet_settings(),
        store=store,
        backends=backends,
        meter=HourlyMeter(),
        telemetry=build_telemetry(TelemetrySettings(), env={}),
    )
    with LiveServer(app) as gateway:
        prometheus = Prometheus(binary, gateway.url.removeprefix("http://"), tmp_path)

        def traffic() -> None:
            for key in keys.values():
                auth = {"authorization": f"Bearer {key}"}
                for body in (
                    {"model": "test-model", "prompt": "hi", "max_tokens": 4},
                    {"model": "test-model", "prompt": "refuse", "max_tokens": 4, "stream": True},
                    {
                        "model": "test-model",
                        "max_tokens": 3,
                        "stream": True,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                ):
                    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
                    httpx.post(f"{gateway.url}{path}", json=body, headers=auth, timeout=10)

        try:
            wait_for(prometheus.ready, "Prometheus to start")
            wait_for(lambda: bool(prometheus.series('up{job="tollgate"} == 1')), "a scrape")
            yield prometheus, traffic
        finally:
            prometheus.stop()


def test_every_dashboard_query_parses_and_the_core_panels_have_data(
    scraped: tuple[Prometheus, Callable[[], None]],
) -> None:
    prometheus, traffic = scraped
    traffic()  # first batch: creates the series
    wait_for(lambda: bool(prometheus.series("tollgate_requests_total")), "the first batch")
    seen = sum(float(s["value"][1]) for s in prometheus.series("tollgate_requests_total"))
    traffic()  # second batch: so every rate has two samples that differ

    def second_batch_scraped() -> bool:
        total = sum(float(s["value"][1]) for s in prometheus.series("tollgate_requests_total"))
        return total > seen

    wait_for(second_batch_scraped, "the second batch")

    exported = set(httpx.get(f"{prometheus.url}/api/v1/label/__name__/values").json()["data"])
    all_queries = list(queries())
    assert {q.dashboard for q in all_queries} >= {"fleet.json", "tenants.json"}
    problems = []
    for q in all_queries:
        unknown = metric_names(q.expr) - exported
        if unknown:
            problems.append(f"{q.dashboard} / {q.panel}: metrics never exported: {unknown}")
        body = prometheus.query(substitute(q.expr))
        if body["status"] != "success":
            problems.append(f"{q.dashboard} / {q.panel}: {body.get('error')}")
        elif _core(q) and not body["data"]["result"]:
            problems.append(f"{q.dashboard} / {q.panel}: no series for {substitute(q.expr)}")
    assert not problems, "\n".join(problems)


def test_latency_panels_link_exemplars_to_traces() -> None:
    latency = [q for q in queries() if "quantile" in q.expr and "_seconds_bucket" in q.expr]
    assert latency and all(q.exemplar for q in latency)


def _core(q: Query) -> bool:
    return q.panel.startswith("$") or any(word in q.panel for word in CORE)


def test_metric_names_are_found_in_expressions() -> None:
    expr = (
        '1e6 * sum by (tollgate_backend) (rate(tollgate_cost_USD_total{error_type!="a b"}[1m]))'
        " / on (x) group_left max(tollgate_backend_healthy) == bool 1"
    )
    assert metric_names(expr) == {"tollgate_cost_USD_total", "tollgate_backend_healthy"}
