"""Tools and structured outputs answered by the embedded engine's constrained decoding.

The engine here is a tiny Gemma with random weights and the real tokenizer: what it says is
noise, but the grammar holds every answer to a call or a schema, so validity is testable.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from typing import Any, Literal

import jsonschema
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from adapters.embedded import EmbeddedBackend
from engine.config import EngineConfig
from engine.loading import load_tokenizer
from gateway.app import create_app
from gateway.settings import parse_settings
from gateway.tenancy.memory import MemoryStore
from tests.engine.tiny_servers import make_tiny_server, tiny_engine_config
from tests.gateway.doubles import PerTokenMeter
from tests.live import LiveServer

pytestmark = pytest.mark.e2e

LONG = {"max_context": 1024, "prefill_buckets": (64, 256, 1024), "kv_buckets": (256, 512, 1024)}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    server = make_tiny_server(load_tokenizer(EngineConfig()), **LONG)
    backend = EmbeddedBackend("local", tiny_engine_config(**LONG), server=server)
    settings = parse_settings({
        "models": [{"id": "gemma-3-270m", "chat_template": "gemma"}],
        "backends": [{"name": "local", "kind": "embedded", "price": {"usd_per_hour": 0.05},
                      "models": {"gemma-3-270m": "gemma-3-270m"}}],
        "server": {"access_log": False},
    }, env={})  # fmt: skip
    store = MemoryStore()
    key = asyncio.run(store.create_key("team")).secret
    app = create_app(settings, store=store, backends=[backend], meter=PerTokenMeter())
    with LiveServer(app) as live:
        yield openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0)
    server.close()


def _arguments(call: Any) -> dict[str, Any]:
    parsed = json.loads(call.function.arguments)
    jsonschema.validate(parsed, WEATHER["function"]["parameters"])  # type: ignore[index]
    return parsed  # type: ignore[no-any-return]


def test_required_tool_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="gemma-3-270m", messages=ASK, tools=[WEATHER], tool_choice="required",
        max_tokens=60, temperature=0.7, seed=3,
    )  # fmt: skip
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    _arguments(call)
    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"}]  # fmt: skip
    final = client.chat.completions.create(
        model="gemma-3-270m", messages=history, tools=[WEATHER], tool_choice="none", max_tokens=5
    )
    assert final.choices[0].message.tool_calls is None
    assert final.usage is not None and final.usage.prompt_tokens > 20  # the history was sent


def test_streamed_named_call(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="gemma-3-270m", messages=ASK, tools=[WEATHER], max_tokens=60, seed=5,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ) as stream:  # fmt: skip
        for _ in stream:
            pass
        done = stream.get_final_completion()
    (call,) = done.choices[0].message.tool_calls or []
    _arguments(call)


def _schemas(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    leaves: list[dict[str, Any]] = [
        {"type": "boolean"},
        {"type": "integer", "minimum": 0, "maximum": 9},
        {"type": "string", "enum": ["red", "green", "blue"]},
        {"type": "string", "maxLength": 6},
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3},
    ]
    out = []
    for _ in range(count):
        names = rng.sample(["a", "b", "c", "d", "e"], rng.randint(1, 3))
        properties = {name: rng.choice(leaves) for name in names}
        if rng.random() < 0.4:
            properties["inner"] = {"type": "object", "properties": {"x": rng.choice(leaves)},
                                   "required": ["x"], "additionalProperties": False}  # fmt: skip
        out.append({"type": "object", "properties": properties, "required": sorted(properties),
                    "additionalProperties": False})  # fmt: skip
    return out


@pytest.mark.parametrize("schema", _schemas(6, seed=11))
def test_json_schema_answers_validate(client: openai.OpenAI, schema: dict[str, Any]) -> None:
    answer = client.chat.completions.create(
        model="gemma-3-270m", messages=ASK, max_tokens=120, temperature=0.8, seed=1,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "answer", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), schema)


def test_responses_structured_stream(client: openai.OpenAI) -> None:
    schema = _schemas(1, seed=2)[0]
    with client.responses.stream(
        model="gemma-3-270m", input="Describe Paris.", max_output_tokens=120,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema}},
    ) as stream:  # fmt: skip
        for _ in stream:
            pass
        done = stream.get_final_response()
    assert done.status == "completed"
    jsonschema.validate(json.loads(done.output_text), schema)


def test_a_bad_schema_is_a_400_naming_the_format(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="gemma-3-270m", messages=ASK,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "x", "schema": {"type": "bogus"}}},
        )  # fmt: skip
    assert refused.value.param == "response_format"


class Card(BaseModel):
    """A bounded answer: even random weights finish it within the token budget."""

    color: Literal["red", "green", "blue"]
    count: int = Field(ge=0, le=9)
    ok: bool


class GetWeather(BaseModel):
    """The weather in a city."""

    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]


def _langchain(client: openai.OpenAI) -> ChatOpenAI:
    return ChatOpenAI(model="gemma-3-270m", base_url=str(client.base_url), api_key=client.api_key,
                      max_retries=0, max_tokens=120, temperature=0.7, seed=4)  # fmt: skip


def test_langchain_structured_output(client: openai.OpenAI) -> None:
    card = _langchain(client).with_structured_output(Card).invoke("Pick a card.")
    assert isinstance(card, Card)


def test_langchain_bound_tool(client: openai.OpenAI) -> None:
    bound = _langchain(client).bind_tools([GetWeather], tool_choice="GetWeather")
    message = bound.invoke("What is the weather in Paris?")
    (call,) = message.tool_calls  # type: ignore[attr-defined]
    assert call["name"] == "GetWeather"
    GetWeather.model_validate(call["args"])
