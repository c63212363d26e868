"""The official ``openai`` package against a running gateway: the surface a user sees."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from adapters.base import BadRequest, Overloaded, Timeout, Unavailable, UpstreamProtocolError
from gateway.app import create_app
from gateway.tenancy.memory import MemoryStore
from tests.e2e.conftest import Gateway, gateway_settings
from tests.gateway.doubles import PerTokenMeter, Script, ScriptedBackend
from tests.live import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


def test_completion(gateway: Gateway) -> None:
    resp = gateway.client().completions.create(model="test-model", prompt="Say hi", max_tokens=8)
    assert resp.choices[0].text == "Hello, world!"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (7, 4)
    assert resp.model == "test-model"
    assert gateway.backend.requests[0].model == "upstream-test-model"


def test_completion_length_and_alias(gateway: Gateway) -> None:
    resp = gateway.client().completions.create(model="test-alias", prompt="x", max_tokens=2)
    assert resp.choices[0].text == "Hello,"
    assert resp.choices[0].finish_reason == "length"


def test_completion_stream_with_usage(gateway: Gateway) -> None:
    stream = gateway.client().completions.create(
        model="test-model",
        prompt="x",
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "Hello, world!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 4 and usage.prompt_tokens == 7
    assert usage.model_extra and usage.model_extra["tollgate_cost_usd"] > 0


def test_chat_and_chat_stream(gateway: Gateway) -> None:
    client = gateway.client()
    resp = client.chat.completions.create(
        model="test-model",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
        max_completion_tokens=8,
    )
    assert resp.choices[0].message.content == "Hello, world!"
    assert resp.usage is not None and resp.usage.total_tokens == 11
    sent = gateway.backend.requests[-1]
    assert sent.messages is not None and sent.messages[1].content == "Hi"

    stream = client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Hello, world!"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


async def test_async_client_and_n(gateway: Gateway) -> None:
    async with gateway.async_client() as client:
        resp = await client.completions.create(
            model="test-model", prompt=["a", "b"], n=2, max_tokens=8
        )
    assert sorted(c.index for c in resp.choices) == [0, 1, 2, 3]
    assert all(c.text == "Hello, world!" for c in resp.choices)
    assert resp.usage is not None and resp.usage.completion_tokens == 16
    assert resp.usage.prompt_tokens == 14  # each prompt counted once


def test_stop_sequences_enforced_by_gateway(gateway: Gateway) -> None:
    client = gateway.client()
    resp = client.completions.create(model="test-model", prompt="x", stop=[", w"], max_tokens=8)
    assert resp.choices[0].text == "Hello"
    assert resp.choices[0].finish_reason == "stop"
    chunks = list(
        client.completions.create(
            model="test-model", prompt="x", stop="ld", max_tokens=8, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == "Hello, wor"
    assert gateway.backend.cancelled >= 1  # upstream was cancelled once the stop matched


def test_request_id_round_trip(gateway: Gateway) -> None:
    raw = gateway.client().completions.with_raw_response.create(
        model="test-model", prompt="x", max_tokens=2, extra_headers={"x-request-id": "abc-123"}
    )
    assert raw.headers["x-request-id"] == "abc-123"
    assert raw.headers["x-tollgate-backend"] == "scripted"
    assert float(raw.headers["x-tollgate-cost-usd"]) > 0
    own = httpx.get(f"{gateway.url}/healthz")
    assert len(own.headers["x-request-id"]) == 32


def test_models(gateway: Gateway) -> None:
    client = gateway.client()
    assert [m.id for m in client.models.list()] == ["test-model"]
    assert client.models.retrieve("test-model").id == "test-model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"temperature": 9}, "temperature"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
        ({"suffix": "tail"}, "suffix"),
        ({"best_of": 3}, "best_of"),
    ],
)
def test_bad_parameters_are_400_naming_the_param(
    gateway: Gateway, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().completions.create(model="test-model", prompt="x", **kwargs)  # type: ignore[call-overload]
    body = info.value.body
    assert isinstance(body, dict) and body["param"] == param


def test_neutral_values_are_accepted(gateway: Gateway) -> None:
    resp = gateway.client().completions.create(
        model="test-model",
        prompt="x",
        max_tokens=4,
        presence_penalty=0,
        frequency_penalty=0,
        logit_bias={},
        suffix="",
    )
    assert resp.choices[0].text


def test_chat_refuses_tools_and_images(gateway: Gateway) -> None:
    client = gateway.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert info.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="test-model",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}
            ],
        )
    assert info.value.param == "messages[0].content[0].type"


def test_auth_errors(gateway: Gateway) -> None:
    bad = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="tg-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="test-model", prompt="x")
    from gateway.tenancy.models import Limits

    limited = gateway.key_for("team-b", Limits(allowed_models=("other",)))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=limited, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.completions.create(model="test-model", prompt="x")
    with pytest.raises(openai.NotFoundError):
        gateway.client().completions.create(model="missing", prompt="x")


def test_rate_limit_is_429_with_retry_after(gateway: Gateway) -> None:
    from gateway.tenancy.models import Limits

    key = gateway.key_for("team-rl", Limits(requests_per_minute=1))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    client.completions.create(model="test-model", prompt="x", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as info:
        client.completions.create(model="test-model", prompt="x", max_tokens=1)
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert info.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("error", "exc_class", "status"),
    [
        (Overloaded("busy", retry_after=3), openai.InternalServerError, 503),
        (Unavailable("down"), openai.InternalServerError, 503),
        (Timeout("slow"), openai.InternalServerError, 504),
        (UpstreamProtocolError("garbage"), openai.InternalServerError, 502),
        (BadRequest("prompt too long", param="prompt"), openai.BadRequestError, 400),
    ],
)
def test_backend_errors_map_to_sdk_exceptions(
    gateway: Gateway, error: Exception, exc_class: type[openai.APIStatusError], status: int
) -> None:
    gateway.backend.script = lambda _: Script(error_before=error)  # type: ignore[arg-type]
    with pytest.raises(exc_class) as info:
        gateway.client().completions.create(model="test-model", prompt="x", max_tokens=2)
    assert info.value.status_code == status
    if isinstance(error, Overloaded):
        assert info.value.response.headers["retry-after"] == "3"


def test_mid_stream_failure_ends_with_error_event(gateway: Gateway) -> None:
    gateway.backend.script = lambda _: Script(error_after=2, error_mid=Unavailable("gone"))
    stream = gateway.client().completions.create(
        model="test-model", prompt="x", max_tokens=8, stream=True
    )
    received: list[str] = []

    def read() -> None:
        received.extend(chunk.choices[0].text for chunk in stream)

    with pytest.raises(openai.APIError):
        read()
    assert "".join(received) == "Hello,"


def test_fallback_is_bounded_by_max_attempts() -> None:
    down = ScriptedBackend("down", script=lambda _: Script(error_before=Unavailable("down")))
    spare = ScriptedBackend("spare")
    configs = [
        {
            "name": b.name,
            "kind": "vllm",
            "url": "http://127.0.0.1:9",
            "models": {"test-model": "upstream-test-model"},
            "price": {"usd_per_mtok_input": 0.0, "usd_per_mtok_output": price},
        }
        for b, price in ((down, 1.0), (spare, 3.0))  # the cost policy tries "down" first
    ]
    for attempts, served in ((1, False), (2, True)):
        down.requests.clear()
        spare.requests.clear()
        store = MemoryStore()
        key = asyncio.run(store.create_key("team")).secret
        settings = gateway_settings(backends=configs, routing={"max_attempts": attempts})
        app = create_app(settings, store=store, backends=[down, spare], meter=PerTokenMeter())
        with LiveServer(app) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
            if served:
                client.completions.create(model="test-model", prompt="x", max_tokens=2)
            else:
                with pytest.raises(openai.InternalServerError):
                    client.completions.create(model="test-model", prompt="x", max_tokens=2)
        assert len(down.requests) == 1
        assert len(spare.requests) == (1 if served else 0)
