"""Function calling and structured outputs through the gateway, driven by the Python SDK.

The upstream is the fake vLLM, which answers tools in vLLM's shapes (``tests/fakes/vllm.py``);
a second backend without tool support shows capability routing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from gateway.app import create_app
from gateway.backends import build_backends
from gateway.tenancy.memory import MemoryStore
from tests.e2e.conftest import gateway_settings
from tests.fakes.vllm import FakeVLLM
from tests.gateway.doubles import PerTokenMeter, ScriptedBackend
from tests.live import LiveServer

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1},
            },
            "required": ["city", "unit", "days"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def _settings(url: str, *, plain: bool = False) -> Any:
    backends: list[dict[str, Any]] = [{
        "name": "vllm-a", "kind": "vllm", "url": url,
        "models": {"test-model": "upstream-test-model"},
        "price": {"usd_per_hour": 4.0},
        "timeouts": {"connect_s": 2, "first_token_s": 5, "total_s": 10},
    }]  # fmt: skip
    if plain:  # a backend that takes chat but has no tool parser or guided decoding
        backends[0]["options"] = {"tools": False, "structured": False}
    return gateway_settings(backends=backends)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeVLLM]:
    with FakeVLLM() as server:
        yield server


def _live(fake: FakeVLLM, **kw: Any) -> Iterator[tuple[openai.OpenAI, openai.AsyncOpenAI]]:
    store = MemoryStore()
    key = asyncio.run(store.create_key("team")).secret
    app = create_app(_settings(fake.url, **kw), store=store, meter=PerTokenMeter())
    with LiveServer(app) as server:
        base = f"{server.url}/v1"
        yield (
            openai.OpenAI(base_url=base, api_key=key, max_retries=0),
            openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0),
        )


@pytest.fixture(scope="module")
def clients(fake: FakeVLLM) -> Iterator[tuple[openai.OpenAI, openai.AsyncOpenAI]]:
    yield from _live(fake)


@pytest.fixture(scope="module")
def client(clients: tuple[openai.OpenAI, openai.AsyncOpenAI]) -> openai.OpenAI:
    return clients[0]


def _valid_arguments(arguments: str) -> dict[str, Any]:
    parsed = json.loads(arguments)
    jsonschema.validate(parsed, WEATHER["function"]["parameters"])  # type: ignore[index]
    return parsed  # type: ignore[no-any-return]


def test_round_trip_whole(client: openai.OpenAI, fake: FakeVLLM) -> None:
    first = client.chat.completions.create(model="test-model", messages=ASK, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
    assert call.function.name == "get_weather"
    _valid_arguments(call.function.arguments)
    sent = fake.requests[-1].json
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "auto"

    history = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"},
    ]
    final = client.chat.completions.create(model="test-model", messages=history, tools=[WEATHER])
    assert final.choices[0].message.content == "Tool result: 18 degrees"
    assert final.choices[0].finish_reason == "stop"
    upstream = fake.requests[-1].json["messages"]
    assert upstream[1]["tool_calls"][0]["id"] == call.id and upstream[1]["content"] is None
    assert upstream[2] == {"role": "tool", "content": "18 degrees", "tool_call_id": call.id}


def test_round_trip_streamed_assembles_in_the_sdk(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="test-model", messages=ASK, tools=[WEATHER], stream_options={"include_usage": True}
    ) as stream:
        for _ in stream:
            pass
        done = stream.get_final_completion()
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    _valid_arguments(call.function.arguments)
    assert done.usage is not None and done.usage.completion_tokens > 0

    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]  # fmt: skip
    chunks = client.chat.completions.create(
        model="test-model", messages=history, tools=[WEATHER], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Tool result: sunny"


def test_streamed_chunks_carry_vllm_pieces(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="test-model", messages=ASK, tools=[WEATHER], stream=True
    ))  # fmt: skip
    pieces = [c.choices[0].delta.tool_calls for c in chunks if c.choices]
    pieces = [p for p in pieces if p]
    first = pieces[0][0]
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function is not None and first.function.name == "get_weather"
    later = [p[0] for p in pieces[1:]]  # the gateway joins pieces that arrive in one read
    assert all(p.id is None and p.function and p.function.name is None for p in later)
    arguments = "".join((p[0].function.arguments or "") for p in pieces if p[0].function)
    _valid_arguments(arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_named_choice_and_async_client(
    clients: tuple[openai.OpenAI, openai.AsyncOpenAI], fake: FakeVLLM
) -> None:
    async def ask() -> Any:
        return await clients[1].chat.completions.create(
            model="test-model", messages=ASK, tools=[CLOCK, WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
        )  # fmt: skip

    answer = asyncio.run(ask())
    assert answer.choices[0].message.tool_calls[0].function.name == "get_weather"
    # vLLM's stream (which the gateway reads) ends a named call with "tool_calls" too.
    assert answer.choices[0].finish_reason == "tool_calls"
    sent = fake.requests[-1].json
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False


def test_tool_choice_none_sends_no_tools(client: openai.OpenAI, fake: FakeVLLM) -> None:
    answer = client.chat.completions.create(
        model="test-model", messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=2
    )
    assert answer.choices[0].message.tool_calls is None
    assert "tools" not in fake.requests[-1].json


def test_json_schema_answer_validates(client: openai.OpenAI, fake: FakeVLLM) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "tags": {"type": "array", "minItems": 2,
                       "items": {"type": "string"}}, "ok": {"type": "boolean"}},
        "required": ["name", "tags", "ok"],
        "additionalProperties": False,
    }  # fmt: skip
    answer = client.chat.completions.create(
        model="test-model", messages=ASK, max_tokens=64,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "card", "schema": schema, "strict": True}},
    )  # fmt: skip
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), schema)
    assert fake.requests[-1].json["response_format"]["json_schema"]["schema"] == schema
    whole = client.chat.completions.create(
        model="test-model", messages=ASK, response_format={"type": "json_object"}
    )
    assert json.loads(whole.choices[0].message.content or "") == {}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
         "tools[0].function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": [{"role": "tool", "content": "18"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
         "messages[0].tool_calls"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
         "response_format.json_schema.name"),
    ],
)  # fmt: skip
def test_bad_tool_and_format_bodies_name_their_parameter(
    client: openai.OpenAI, body: dict[str, Any], param: str
) -> None:
    payload = {"model": "test-model", "messages": ASK, **body}
    response = httpx.post(
        f"{client.base_url}chat/completions",
        headers={"authorization": f"Bearer {client.api_key}"},
        json=payload,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"


def test_routed_only_to_backends_that_support_them(fake: FakeVLLM) -> None:
    for client, _ in _live(fake, plain=True):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="test-model", messages=ASK, tools=[WEATHER])
        assert refused.value.param == "tools"
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model="test-model", messages=ASK, response_format={"type": "json_object"}
            )
        assert refused.value.param == "response_format"
        plain = client.chat.completions.create(
            model="test-model", messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=2
        )
        assert plain.choices[0].message.content


def test_a_vllm_without_auto_tool_choice_refuses_and_the_option_says_so() -> None:
    with FakeVLLM(auto_tools=False) as strict:
        for client, _ in _live(strict):  # configured as if it could: its 400 reaches the client
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model="test-model", messages=ASK, tools=[WEATHER])
            assert "--enable-auto-tool-choice" in refused.value.message
            named = client.chat.completions.create(
                model="test-model", messages=ASK, tools=[WEATHER],
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
            )  # fmt: skip
            assert named.choices[0].message.tool_calls  # a named call needs no tool parser
        for client, _ in _live(strict, plain=True):  # `tools: false`: refused before sending
            posts = [r for r in strict.requests if r.method == "POST"]
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model="test-model", messages=ASK, tools=[WEATHER])
            assert refused.value.param == "tools"
            assert [r for r in strict.requests if r.method == "POST"] == posts


def test_a_backend_without_tools_is_passed_over(fake: FakeVLLM) -> None:
    settings = _settings(fake.url)
    scripted = {"name": "scripted", "kind": "vllm", "url": "http://127.0.0.1:9",
                "models": {"test-model": "upstream"}, "price": {"usd_per_hour": 0.01}}  # fmt: skip
    settings = gateway_settings(backends=[*settings.model_dump()["backends"], scripted])
    vllm = [b for b in build_backends(settings) if b.name == "vllm-a"]
    cheap = ScriptedBackend()  # far cheaper, and no tool support: tool requests must avoid it
    store = MemoryStore()
    key = asyncio.run(store.create_key("team")).secret
    app = create_app(settings, store=store, backends=[*vllm, cheap], meter=PerTokenMeter())
    with LiveServer(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        for _ in range(3):
            answer = client.chat.completions.with_raw_response.create(
                model="test-model", messages=ASK, tools=[WEATHER]
            )
            assert answer.headers["x-tollgate-backend"] == "vllm-a"
        assert not cheap.requests


RESPONSES_WEATHER = {"type": "function", **WEATHER["function"]}  # type: ignore[dict-item]


def test_responses_round_trip(client: openai.OpenAI, fake: FakeVLLM) -> None:
    first = client.responses.create(model="test-model", input="Weather?", tools=[RESPONSES_WEATHER])
    assert first.status == "completed"
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.id.startswith("fc_") and call.call_id.startswith("chatcmpl-tool-")
    _valid_arguments(call.arguments)
    assert first.tools[0].name == "get_weather" and first.tool_choice == "auto"
    assert fake.requests[-1].json["tools"] == [WEATHER]

    history: list[Any] = [
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "rain"},
    ]  # fmt: skip
    final = client.responses.create(model="test-model", input=history, tools=[RESPONSES_WEATHER])
    assert final.output_text == "Tool result: rain"
    sent = fake.requests[-1].json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    assert sent[2] == {"role": "tool", "content": "rain", "tool_call_id": call.call_id}


def test_responses_streamed_call_events(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="test-model", input="Weather?", tools=[RESPONSES_WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
    ) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        done = stream.get_final_response()
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == [
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"
    ]
    (call,) = done.output
    assert call.type == "function_call" and call.status == "completed"
    _valid_arguments(call.arguments)
    assert done.tool_choice.name == "get_weather"  # type: ignore[union-attr]


def test_responses_structured_text(client: openai.OpenAI, fake: FakeVLLM) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}},
              "required": ["n"], "additionalProperties": False}  # fmt: skip
    answer = client.responses.create(
        model="test-model", input="A number", max_output_tokens=32,
        text={"format": {"type": "json_schema", "name": "num", "schema": schema, "strict": True}},
    )  # fmt: skip
    jsonschema.validate(json.loads(answer.output_text), schema)
    sent = fake.requests[-1].json["response_format"]
    assert sent == {"type": "json_schema",
                    "json_schema": {"name": "num", "schema": schema, "strict": True}}  # fmt: skip
    assert answer.text.format.type == "json_schema"  # type: ignore[union-attr]
