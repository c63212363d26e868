"""No request body makes the gateway answer 500 or anything but OpenAI's JSON error envelope."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.tenancy.memory import MemoryStore
from tests.e2e.conftest import gateway_settings
from tests.gateway.doubles import PerTokenMeter, ScriptedBackend
from tests.live import LiveServer

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
COMPLETION_KEYS = [
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "echo",
    "logprobs",
    "suffix",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "best_of",
    "top_k",
]
CHAT_KEYS = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "n",
    "stop",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "response_format",
    "seed",
]


def _bodies(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    plausible = {
        "model": st.sampled_from(["test-model", "test-alias", "nope", ""]) | json_values,
        "prompt": st.text(max_size=30) | st.lists(st.integers(-5, 300), max_size=5) | json_values,
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
                    "content": st.text(max_size=20) | json_values,
                }
            ),
            max_size=3,
        )
        | json_values,
        "max_tokens": st.integers(-10, 10**12) | json_values,
        "n": st.integers(-2, 200) | json_values,
        "stream": st.booleans() | json_values,
    }
    return st.fixed_dictionaries({}, optional={k: plausible.get(k, json_values) for k in keys})


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[str, str]]:
    store = MemoryStore()
    key = asyncio.run(store.create_key("fuzz")).secret
    app = create_app(
        gateway_settings(), store=store, backends=[ScriptedBackend()], meter=PerTokenMeter()
    )
    with LiveServer(app) as server:
        yield server.url, key


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = orjson.loads(response.content)
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.mark.timeout(120)
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_bodies(COMPLETION_KEYS) | json_values, chat=st.booleans())
def test_json_bodies_never_500(live: tuple[str, str], body: Any, chat: bool) -> None:
    url, key = live
    path = "/v1/chat/completions" if chat else "/v1/completions"
    if chat and isinstance(body, dict):
        body = {k: v for k, v in body.items() if k in CHAT_KEYS} | {
            "messages": body.get("prompt", [{"role": "user", "content": "hi"}])
        }
    response = httpx.post(
        url + path,
        content=json.dumps(body),
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )
    _check(response)


@pytest.mark.timeout(60)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200), chat=st.booleans())
def test_raw_bytes_never_500(live: tuple[str, str], raw: bytes, chat: bool) -> None:
    url, key = live
    path = "/v1/chat/completions" if chat else "/v1/completions"
    response = httpx.post(
        url + path, content=raw, headers={"authorization": f"Bearer {key}"}, timeout=10
    )
    _check(response)
