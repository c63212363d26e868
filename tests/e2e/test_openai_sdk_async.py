"""The ``openai`` package's async client against a live gateway in front of the fake vLLM: the
paths the Node SDK and LangChain tests cover, as an asyncio application sees them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Literal, cast

import openai
import pytest
from openai.types.chat import (
    ChatCompletionMessage,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)
from pydantic import BaseModel

from tests.e2e.clients.stack import (
    FINAL_ANSWER,
    FULL_TEXT,
    MODEL,
    REPORT_SCHEMA,
    TOOL_OUTPUT,
    WEATHER_REQUIRED,
    WEATHER_TOOL,
    VLLMStack,
    report,
    vllm_stack,
    weather_arguments,
)

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather in Paris?"}
]
TOOLS: list[ChatCompletionToolParam] = [WEATHER_TOOL]  # type: ignore[list-item]


class Weather(BaseModel):
    """A weather report, parsed by the SDK's ``chat.completions.parse``."""

    city: str
    unit: Literal["celsius", "fahrenheit"]
    days: int


@pytest.fixture(scope="module")
def stack() -> Iterator[VLLMStack]:
    with vllm_stack() as running:
        yield running


@pytest.fixture
async def client(stack: VLLMStack) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=stack.base_url, api_key=stack.key, max_retries=0) as c:
        yield c


def with_tool_result(assistant: ChatCompletionMessage) -> list[ChatCompletionMessageParam]:
    """The question, the SDK's own assistant message, and the tool's answer to each call."""
    results: list[ChatCompletionMessageParam] = [
        {"role": "tool", "tool_call_id": call.id, "content": TOOL_OUTPUT}
        for call in assistant.tool_calls or ()
    ]
    sent = cast(ChatCompletionMessageParam, assistant.model_dump(exclude_none=True))
    return [*QUESTION, sent, *results]


async def test_chat_and_stream_with_usage(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(model=MODEL, messages=QUESTION)
    assert resp.choices[0].message.content == FULL_TEXT
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens == 8
    stream = await client.chat.completions.create(
        model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == FULL_TEXT
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


async def test_completion_and_models(client: openai.AsyncOpenAI) -> None:
    resp = await client.completions.create(model=MODEL, prompt="Say hi", max_tokens=4)
    assert (resp.choices[0].text, resp.choices[0].finish_reason) == ("Hello, world!", "length")
    assert [m.id async for m in client.models.list()] == [MODEL]
    assert (await client.models.retrieve(MODEL)).id == MODEL


async def test_unknown_model_is_not_found(client: openai.AsyncOpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="missing", messages=QUESTION, stream=stream)
        assert info.value.status_code == 404 and info.value.code == "model_not_found"


async def test_responses_whole_and_streamed(client: openai.AsyncOpenAI) -> None:
    resp = await client.responses.create(model=MODEL, input="Hi")
    assert (resp.status, resp.output_text) == ("completed", FULL_TEXT)
    assert resp.usage is not None and resp.usage.output_tokens == 8
    events = [event async for event in await client.responses.create(
        model=MODEL, input="Hi", stream=True
    )]  # fmt: skip
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == FULL_TEXT
    async with client.responses.stream(model=MODEL, input="Hi") as helper:
        deltas = [e.delta async for e in helper if e.type == "response.output_text.delta"]
        final = await helper.get_final_response()
    assert "".join(deltas) == final.output_text == FULL_TEXT


async def test_tool_round_trip(client: openai.AsyncOpenAI) -> None:
    first = await client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS)
    assert first.choices[0].finish_reason == "tool_calls"
    assistant = first.choices[0].message
    assert assistant.tool_calls is not None
    [call] = assistant.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert weather_arguments(call.model_dump()).items() >= WEATHER_REQUIRED.items()
    final = await client.chat.completions.create(
        model=MODEL, messages=with_tool_result(assistant), tools=TOOLS
    )
    assert final.choices[0].message.content == FINAL_ANSWER
    assert final.choices[0].finish_reason == "stop"


async def test_tool_round_trip_streamed(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required"
    ) as stream:
        names = [e.name async for e in stream if e.type == "tool_calls.function.arguments.done"]
        first = await stream.get_final_completion()
    assert names == ["get_weather"]
    assert first.choices[0].finish_reason == "tool_calls"
    assistant = first.choices[0].message
    assert assistant.tool_calls is not None
    [call] = assistant.tool_calls
    assert weather_arguments(call.model_dump()).items() >= WEATHER_REQUIRED.items()
    async with client.chat.completions.stream(
        model=MODEL, messages=with_tool_result(assistant), tools=TOOLS
    ) as answer:
        final = await answer.get_final_completion()
    assert final.choices[0].message.content == FINAL_ANSWER


async def test_json_schema_and_parse(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Report the weather."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "weather_report", "schema": REPORT_SCHEMA, "strict": True},
        },
    )
    assert report(resp.choices[0].message.content)["wind"] == {"speed": 1}
    parsed = await client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Weather?"}], response_format=Weather
    )
    assert parsed.choices[0].message.parsed == Weather(city="x", unit="celsius", days=1)
    answer = await client.chat.completions.create(
        model=MODEL, messages=QUESTION, response_format={"type": "json_object"}
    )
    assert json.loads(answer.choices[0].message.content or "") == {}
