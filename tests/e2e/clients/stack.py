"""A live gateway in front of the fake vLLM, and the tool and schema every client sends it.

The fake answers a chat with ``tools`` by calling the named (or first) function with a minimal
valid instance of its parameters (strings ``"x"``, numbers ``1``, booleans ``true``, enums their
first value), a chat ending in a ``tool`` message with ``Tool result: <content>``, and a
``json_schema`` response format with a minimal valid instance of the schema.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jsonschema

from gateway.app import create_app
from gateway.tenancy.memory import MemoryStore
from tests.e2e.conftest import gateway_settings
from tests.fakes.vllm import FakeVLLM
from tests.gateway.doubles import PerTokenMeter
from tests.live import LiveServer

MODEL = "test-model"
UPSTREAM_MODEL = "upstream-test-model"
FULL_TEXT = "Hello, world! How are you?"  # every canned token: the fake ends with "stop"

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city's name."},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city", "unit"],
}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": WEATHER_PARAMETERS,
    },
}
WEATHER_REQUIRED = {"city": "x", "unit": "celsius"}  # what the fake fills in
TOOL_OUTPUT = '{"temperature": 21}'  # what every client's tool answers
FINAL_ANSWER = f"Tool result: {TOOL_OUTPUT}"

REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "temperature": {"type": "number"},
        "sunny": {"type": "boolean"},
        "sky": {"type": "string", "enum": ["clear", "cloudy"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "wind": {
            "type": "object",
            "properties": {"speed": {"type": "integer"}},
            "required": ["speed"],
            "additionalProperties": False,
        },
    },
    "required": ["city", "temperature", "sunny", "sky", "tags", "wind"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class VLLMStack:
    """A running gateway whose one backend is a fake vLLM on a real socket."""

    url: str
    key: str
    fake: FakeVLLM

    @property
    def base_url(self) -> str:
        """Where an OpenAI client points: the gateway's ``/v1``."""
        return f"{self.url}/v1"


@contextmanager
def vllm_stack() -> Iterator[VLLMStack]:
    """Start the fake vLLM and a gateway (real uvicorn, free port) routing to it."""
    fake = FakeVLLM()
    with fake:
        settings = gateway_settings(
            backends=[
                {
                    "name": "vllm-a",
                    "kind": "vllm",
                    "url": fake.url,
                    "models": {MODEL: UPSTREAM_MODEL},
                    "price": {"usd_per_hour": 4.0},
                    "timeouts": {"connect_s": 2, "first_token_s": 5, "total_s": 10},
                }
            ]
        )
        store = MemoryStore()
        key = asyncio.run(store.create_key("team-clients")).secret
        app = create_app(settings, store=store, meter=PerTokenMeter())
        with LiveServer(app) as server:
            yield VLLMStack(server.url, key, fake)


def weather_arguments(call: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of a ``get_weather`` call (a chat ``tool_calls`` entry), checked against
    the tool's parameters schema."""
    function = call["function"]
    arguments: dict[str, Any] = json.loads(function["arguments"])
    jsonschema.validate(arguments, WEATHER_PARAMETERS)
    return arguments


def report(content: str | None) -> dict[str, Any]:
    """A ``json_schema`` answer's content, parsed and checked against ``REPORT_SCHEMA``."""
    assert content is not None, "the answer has no content"
    value: dict[str, Any] = json.loads(content)
    jsonschema.validate(value, REPORT_SCHEMA)
    return value
