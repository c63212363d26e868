"""The gateway in front of a real HTTP server speaking vLLM's protocol, driven by the SDK."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.app import create_app
from gateway.tenancy.memory import MemoryStore
from tests.e2e.conftest import gateway_settings
from tests.fakes.vllm import FakeVLLM
from tests.gateway.doubles import PerTokenMeter
from tests.live import LiveServer

pytestmark = pytest.mark.e2e


def _settings(url: str) -> Any:
    return gateway_settings(
        backends=[{
            "name": "vllm-a", "kind": "vllm", "url": url,
            "models": {"test-model": "upstream-test-model"},
            "price": {"usd_per_hour": 4.0},
            "timeouts": {"connect_s": 2, "first_token_s": 5, "total_s": 10},
        }]
    )


@pytest.fixture
def stack() -> Iterator[tuple[FakeVLLM, openai.OpenAI, str]]:
    with FakeVLLM() as fake:
        store = MemoryStore()
        key = asyncio.run(store.create_key("team")).secret
        app = create_app(_settings(fake.url), store=store, meter=PerTokenMeter())
        with LiveServer(app) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
            yield fake, client, server.url


def test_completion_and_usage_from_upstream(stack: tuple[FakeVLLM, openai.OpenAI, str]) -> None:
    fake, client, _ = stack
    resp = client.completions.create(model="test-model", prompt="Hi", max_tokens=4)
    assert resp.choices[0].text == "Hello, world!"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 4
    sent = fake.requests[-1].json
    assert sent["model"] == "upstream-test-model"


def test_chat_stream_always_asks_upstream_for_usage(
    stack: tuple[FakeVLLM, openai.OpenAI, str],
) -> None:
    fake, client, _ = stack
    chunks = list(client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
        stream=True,
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world"
    assert fake.requests[-1].json["stream_options"] == {"include_usage": True}


def test_client_disconnect_cancels_upstream(stack: tuple[FakeVLLM, openai.OpenAI, str]) -> None:
    fake, _, url = stack
    hold = fake.gate(2)  # the third token waits until released
    key = stack[1].api_key
    with httpx.stream(
        "POST", f"{url}/v1/completions", headers={"authorization": f"Bearer {key}"},
        json={"model": "test-model", "prompt": "Hi", "max_tokens": 8, "stream": True},
    ) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    # The client is gone; the gateway must close its upstream stream.
    assert fake.cancelled.wait_sync(5)
    hold.set()


def test_client_leaving_a_non_streamed_request_cancels_upstream(
    stack: tuple[FakeVLLM, openai.OpenAI, str],
) -> None:
    fake, client, url = stack
    hold = fake.gate(2)  # the answer cannot complete until released
    body = orjson.dumps({"model": "test-model", "prompt": "Hi", "max_tokens": 8})
    head = (
        f"POST /v1/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {client.api_key}"
        f"\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + body)
        assert fake.received.wait_sync(5)
    # The client is gone before any byte of its answer: the upstream call must end too.
    assert fake.cancelled.wait_sync(5)
    hold.set()
