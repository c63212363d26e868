"""LangChain's ``ChatOpenAI`` (``langchain-openai``, pinned in the dev extra) pointed at a live
gateway in front of the fake vLLM: invoke, stream, structured output and tool binding."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Literal

import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.e2e.clients.stack import (
    FINAL_ANSWER,
    FULL_TEXT,
    MODEL,
    TOOL_OUTPUT,
    UPSTREAM_MODEL,
    WEATHER_REQUIRED,
    VLLMStack,
    vllm_stack,
)

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

QUESTION = "What is the weather in Paris?"


class Weather(BaseModel):
    """A weather report, as an application asks the model for one."""

    city: str
    unit: Literal["celsius", "fahrenheit"]
    days: int
    sunny: bool


SMALLEST_WEATHER = Weather(city="x", unit="celsius", days=1, sunny=True)


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
    """The weather in a city."""
    return TOOL_OUTPUT


@pytest.fixture(scope="module")
def stack() -> Iterator[VLLMStack]:
    with vllm_stack() as running:
        yield running


@pytest.fixture
async def http_async_client() -> AsyncIterator[openai.DefaultAsyncHttpxClient]:
    # ChatOpenAI's default async HTTP client is cached per base URL for the whole process;
    # each test runs its own event loop, so each needs a client of its own.
    async with openai.DefaultAsyncHttpxClient() as client:
        yield client


def chat_model(stack: VLLMStack, **kw: Any) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=stack.base_url, api_key=stack.key, max_retries=0, **kw)


def last_sent(stack: VLLMStack) -> dict[str, Any]:
    """The body of the last request the fake vLLM received."""
    body: dict[str, Any] = stack.fake.requests[-1].json
    return body


def joined(chunks: Iterable[BaseMessage]) -> AIMessageChunk:
    """A stream's chunks added up into one message, as LangChain assembles them."""
    whole: AIMessageChunk | None = None
    for chunk in chunks:
        assert isinstance(chunk, AIMessageChunk)
        whole = chunk if whole is None else whole + chunk
    assert whole is not None, "the stream was empty"
    return whole


def test_invoke(stack: VLLMStack) -> None:
    answer = chat_model(stack).invoke([("system", "Be brief."), ("human", "Hi")])
    assert isinstance(answer, AIMessage)
    assert answer.content == FULL_TEXT
    assert answer.response_metadata["finish_reason"] == "stop"
    assert answer.response_metadata["model_name"] == MODEL
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 8
    sent = last_sent(stack)
    assert sent["model"] == UPSTREAM_MODEL
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]


def test_stream_with_usage(stack: VLLMStack) -> None:
    chunks = list(chat_model(stack, stream_usage=True).stream("Hi"))
    assert len(chunks) > 1
    whole = joined(chunks)
    assert whole.content == FULL_TEXT
    assert whole.response_metadata["finish_reason"] == "stop"
    assert whole.usage_metadata is not None and whole.usage_metadata["output_tokens"] == 8
    assert whole.usage_metadata["total_tokens"] == (
        whole.usage_metadata["input_tokens"] + whole.usage_metadata["output_tokens"]
    )


async def test_async_invoke_and_stream(
    stack: VLLMStack, http_async_client: openai.DefaultAsyncHttpxClient
) -> None:
    model = chat_model(stack, stream_usage=True, http_async_client=http_async_client)
    answer = await model.ainvoke("Hi")
    assert answer.content == FULL_TEXT
    chunks = [chunk async for chunk in model.astream("Hi")]
    whole = joined(chunks)
    assert whole.content == FULL_TEXT
    assert whole.usage_metadata is not None and whole.usage_metadata["output_tokens"] == 8


def test_structured_output_defaults_to_json_schema(stack: VLLMStack) -> None:
    structured = chat_model(stack).with_structured_output(Weather)
    assert structured.invoke("Report the weather.") == SMALLEST_WEATHER
    sent = last_sent(stack)
    assert "tools" not in sent  # the pinned version's default is response_format json_schema
    format_ = sent["response_format"]
    assert format_["type"] == "json_schema" and format_["json_schema"]["strict"] is True
    assert format_["json_schema"]["name"] == "Weather"


def test_structured_output_by_function_calling(stack: VLLMStack) -> None:
    structured = chat_model(stack).with_structured_output(
        Weather, method="function_calling", include_raw=True
    )
    out = structured.invoke("Report the weather.")
    assert isinstance(out, dict)
    assert out["parsing_error"] is None
    assert out["parsed"] == SMALLEST_WEATHER
    assert out["raw"].tool_calls[0]["name"] == "Weather"
    sent = last_sent(stack)
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "Weather"}}
    assert sent["parallel_tool_calls"] is False and "response_format" not in sent


# LangChain's own chunk merging warns while it serializes the parsed object.
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
def test_structured_output_streamed(stack: VLLMStack) -> None:
    structured = chat_model(stack).with_structured_output(Weather)
    assert list(structured.stream("Report the weather."))[-1] == SMALLEST_WEATHER


def check_round_trip(first: BaseMessage, answer: BaseMessage, stack: VLLMStack) -> None:
    assert isinstance(first, AIMessage)
    [call] = first.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    assert call["args"].items() >= WEATHER_REQUIRED.items()
    assert first.response_metadata["finish_reason"] == "tool_calls"
    assert answer.content == FINAL_ANSWER
    history = last_sent(stack)["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool"]
    assert history[1]["tool_calls"][0]["id"] == history[2]["tool_call_id"] == call["id"]
    assert history[2]["content"] == TOOL_OUTPUT


def test_bind_tools_round_trip(stack: VLLMStack) -> None:
    model = chat_model(stack).bind_tools([get_weather])
    messages: list[BaseMessage] = [HumanMessage(QUESTION)]
    first = model.invoke(messages)
    assert isinstance(first, AIMessage)
    messages += [first, get_weather.invoke(first.tool_calls[0])]
    check_round_trip(first, model.invoke(messages), stack)


def test_bind_tools_round_trip_streamed(stack: VLLMStack) -> None:
    model = chat_model(stack).bind_tools([get_weather])
    messages: list[BaseMessage] = [HumanMessage(QUESTION)]
    first = joined(model.stream(messages))  # LangChain assembles the call's deltas
    messages += [first, get_weather.invoke(first.tool_calls[0])]
    answer = joined(model.stream(messages))
    check_round_trip(first, answer, stack)


async def test_bind_tools_round_trip_async(
    stack: VLLMStack, http_async_client: openai.DefaultAsyncHttpxClient
) -> None:
    model = chat_model(stack, http_async_client=http_async_client).bind_tools(
        [get_weather], tool_choice="get_weather"
    )
    messages: list[BaseMessage] = [HumanMessage(QUESTION)]
    first = await model.ainvoke(messages)
    assert isinstance(first, AIMessage)
    assert last_sent(stack)["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }
    messages += [first, await get_weather.ainvoke(first.tool_calls[0])]
    answer = await model.ainvoke(messages)
    assert answer.content == FINAL_ANSWER
    assert first.tool_calls[0]["args"].items() >= WEATHER_REQUIRED.items()
