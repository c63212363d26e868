"""A live gateway in front of fake vLLM upstreams, built from settings like production.

``fleet(...)`` starts one uvicorn gateway whose backends are real ``vllm`` adapters pointing at
the given fakes, and a key for one tenant; ``Fleet.ledger()`` reads what that tenant was billed
once the gateway has drained its settlements.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from gateway.app import create_app
from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.models import Limits, UsageRow
from tests.e2e.conftest import gateway_settings
from tests.fakes.vllm import FakeVLLM
from tests.gateway.doubles import PerTokenMeter
from tests.live import LiveServer

TENANT = "team"


@dataclass
class Upstream:
    """One backend of the fleet: its fake, its per-output-token price and its overrides."""

    name: str
    fake: FakeVLLM
    usd_per_mtok_output: float = 1.0  # the cost policy tries the cheapest first
    timeouts: Mapping[str, float] | None = None
    capacity: Mapping[str, float] | None = None

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "name": self.name,
            "kind": "vllm",
            "url": self.fake.url,
            "models": {"test-model": "upstream-test-model"},
            "price": {"usd_per_mtok_input": 0.0, "usd_per_mtok_output": self.usd_per_mtok_output},
            "timeouts": {"connect_s": 2, "first_token_s": 10, "total_s": 30,
                         **(self.timeouts or {})},
        }  # fmt: skip
        if self.capacity:
            cfg["capacity"] = dict(self.capacity)
        return cfg


@dataclass
class Fleet:
    """A running gateway, its store and meter, and a key of tenant ``team``."""

    url: str
    key: str
    store: MemoryStore
    meter: PerTokenMeter

    def post(self, path: str, body: Mapping[str, Any], timeout: float = 30) -> httpx.Response:
        return httpx.post(
            self.url + path,
            json=dict(body),
            headers={"authorization": f"Bearer {self.key}"},
            timeout=timeout,
        )

    def ledger(self) -> UsageRow:
        """What the tenant was billed, summed (read after the gateway stopped)."""
        rows = asyncio.run(
            self.store.usage(tenant=TENANT, start=0, end=time.time() + 3600, group_by=[])
        )
        total = UsageRow({}, 0, 0, 0, 0.0)
        for row in rows:
            total = UsageRow(
                {},
                total.requests + row.requests,
                total.prompt_tokens + row.prompt_tokens,
                total.completion_tokens + row.completion_tokens,
                total.cost_usd + row.cost_usd,
            )
        return total


FleetFactory = Callable[..., Any]


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The JSON events of a streamed answer, ``[DONE]`` left out."""
    lines = [line.removeprefix(b"data: ") for line in raw.split(b"\n\n") if line]
    return [orjson.loads(line) for line in lines if line != b"[DONE]"]


@pytest.fixture
def fleet() -> FleetFactory:
    """``with fleet(upstreams, limits=..., **settings) as f:`` — a gateway over the fakes."""

    @contextmanager
    def start(
        upstreams: Sequence[Upstream], limits: Limits | None = None, **overrides: Any
    ) -> Iterator[Fleet]:
        settings = gateway_settings(
            backends=[u.config() for u in upstreams],
            routing={"explore_share": 0.0, **overrides.pop("routing", {})},
            **overrides,
        )
        store = MemoryStore()
        meter = PerTokenMeter()

        async def issue() -> str:
            await store.create_tenant(TENANT, limits or Limits())
            return (await store.create_key(TENANT)).secret

        key = asyncio.run(issue())
        with LiveServer(create_app(settings, store=store, meter=meter)) as server:
            yield Fleet(server.url, key, store, meter)

    return start
