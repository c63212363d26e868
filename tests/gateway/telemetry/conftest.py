"""A live gateway whose telemetry goes to in-memory span and metric readers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from gateway.app import create_app
from gateway.settings import Settings, parse_settings
from gateway.telemetry import Telemetry
from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.models import Limits
from tests.gateway.doubles import PerTokenMeter, ScriptedBackend
from tests.live import LiveServer

PRICES = {"cheap": 1.0, "dear": 5.0}  # $/1M output tokens: the cost policy tries cheap first


def settings_for(names: list[str], *, embedded: bool = False) -> Settings:
    """One model served by the named backends, priced per token; vLLM servers at one url
    unless ``embedded`` (the in-process engine's kind, which has no url)."""
    where = {"kind": "embedded"} if embedded else {"kind": "vllm", "url": "http://127.0.0.1:9"}
    backends = [
        {
            "name": name,
            **where,
            "models": {"test-model": "upstream-test-model"},
            "price": {"usd_per_mtok_input": 0.1, "usd_per_mtok_output": PRICES.get(name, 2.0)},
        }
        for name in names
    ]
    return parse_settings(
        {
            "models": [{"id": "test-model", "chat_template": "chatml"}],
            "backends": backends,
            "server": {"access_log": False},
            "admin_key": "tg-admin-test",
        },
        env={},
    )


@dataclass
class Traced:
    """A running gateway and the readers its telemetry feeds."""

    url: str
    key: str
    store: MemoryStore
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def post(
        self,
        path: str,
        body: dict[str, Any],
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        auth = {"authorization": f"Bearer {key or self.key}", **(headers or {})}
        return httpx.post(f"{self.url}{path}", json=body, headers=auth, timeout=10)

    def key_for(self, tenant: str, limits: Limits) -> str:
        async def issue() -> str:
            await self.store.create_tenant(tenant, limits)
            return (await self.store.create_key(tenant)).secret

        return asyncio.run(issue())

    def finished(self, count: int) -> list[ReadableSpan]:
        """The ended spans once ``count`` SERVER spans are in (they end after the last byte)."""
        deadline = time.monotonic() + 5
        while True:
            spans = list(self.spans.get_finished_spans())
            servers = [s for s in spans if s.kind.name == "SERVER"]
            if len(servers) >= count or time.monotonic() > deadline:
                return spans
            time.sleep(0.01)

    def collect(self) -> MetricsData:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return data


Factory = Callable[..., Traced]


@pytest.fixture
def traced() -> Iterator[Factory]:
    """Build a traced gateway over ``backends`` (a ScriptedBackend named scripted by default)."""
    servers: list[LiveServer] = []

    def build(
        backends: list[ScriptedBackend] | None = None,
        *,
        record_content: bool = False,
        embedded: bool = False,
        sampled: bool = True,
    ) -> Traced:
        backends = backends or [ScriptedBackend()]
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider(sampler=None if sampled else ALWAYS_OFF)
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        reader = InMemoryMetricReader()
        telemetry = Telemetry(tracer_provider, [reader], record_content=record_content)
        store = MemoryStore()
        key = asyncio.run(store.create_key("team-a")).secret
        app = create_app(
            settings_for([b.name for b in backends], embedded=embedded),
            store=store,
            backends=backends,
            meter=PerTokenMeter(),
            telemetry=telemetry,
        )
        server = LiveServer(app).__enter__()
        servers.append(server)
        return Traced(server.url, key, store, exporter, reader)

    yield build
    for server in servers:
        server.__exit__(None, None, None)
