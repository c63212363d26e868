"""A running gateway (real uvicorn, random port) in front of scripted backends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from gateway.app import create_app
from gateway.settings import Settings, parse_settings
from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.models import Limits
from tests.gateway.doubles import PerTokenMeter, ScriptedBackend
from tests.live import LiveServer

ADMIN_KEY = "tg-admin-test"


def gateway_settings(**overrides: Any) -> Settings:
    """A config with one model served by one backend named ``scripted``."""
    data: dict[str, Any] = {
        "models": [{"id": "test-model", "aliases": ["test-alias"], "chat_template": "chatml"}],
        "backends": [
            {
                "name": "scripted",
                "kind": "vllm",
                "url": "http://127.0.0.1:9",
                "models": {"test-model": "upstream-test-model"},
                "price": {"usd_per_mtok_input": 1.0, "usd_per_mtok_output": 2.0},
            }
        ],
        "server": {"max_body_bytes": 65536, "access_log": False},
        "admin_key": ADMIN_KEY,
    }
    data.update(overrides)
    return parse_settings(data, env={})


@dataclass
class Gateway:
    """A live gateway and what a test needs to talk to it."""

    url: str
    key: str
    backend: ScriptedBackend
    store: MemoryStore
    meter: PerTokenMeter
    app: Any = None  # the ASGI app, for tests that must speak to it below HTTP

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, **kw)

    def async_client(self, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, **kw)

    def key_for(self, tenant: str, limits: Limits | None = None) -> str:
        async def issue() -> str:
            if limits is not None:
                await self.store.create_tenant(tenant, limits)
            return (await self.store.create_key(tenant)).secret

        return asyncio.run(issue())


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    backend = ScriptedBackend()
    store = MemoryStore()
    meter = PerTokenMeter()
    key = asyncio.run(store.create_key("team-a")).secret
    app = create_app(gateway_settings(), store=store, backends=[backend], meter=meter)
    with LiveServer(app) as server:
        yield Gateway(server.url, key, backend, store, meter, app)
