"""``POST /v1/responses`` through the official ``openai`` package: answers, streams, refusals,
and the same metering as chat."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest

from adapters.base import Unavailable
from gateway.tenancy.models import UsageRow
from tests.e2e.conftest import Gateway
from tests.gateway.doubles import Script

pytestmark = pytest.mark.e2e

EVENT_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 4,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def _usage_rows(gateway: Gateway, requests: int) -> list[UsageRow]:
    """The tenant's ledger once ``requests`` requests have settled (settlement is async)."""
    deadline = time.monotonic() + 5
    while True:
        rows = asyncio.run(
            gateway.store.usage(tenant="team-a", start=0, end=time.time() + 3600, group_by=[])
        )
        if sum(r.requests for r in rows) >= requests or time.monotonic() > deadline:
            return list(rows)
        time.sleep(0.02)


def test_response_text_usage_and_headers(gateway: Gateway) -> None:
    raw = gateway.client().responses.with_raw_response.create(model="test-model", input="Hi")
    assert float(raw.headers["x-tollgate-cost-usd"]) > 0
    assert raw.headers["x-tollgate-backend"] == "scripted"
    resp = raw.parse()
    assert resp.id.startswith("resp_") and resp.object == "response"
    assert resp.status == "completed" and resp.incomplete_details is None
    assert resp.output_text == "Hello, world!"
    message = resp.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.status == "completed"
    assert resp.usage is not None
    usage = resp.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (7, 4, 11)
    assert resp.usage.input_tokens_details.cached_tokens == 0
    assert resp.usage.output_tokens_details.reasoning_tokens == 0
    assert resp.model == "test-model"
    assert gateway.backend.requests[0].model == "upstream-test-model"


def test_max_output_tokens_makes_it_incomplete(gateway: Gateway) -> None:
    resp = gateway.client().responses.create(model="test-alias", input="Hi", max_output_tokens=2)
    assert resp.output_text == "Hello,"
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.max_output_tokens == 2
    assert gateway.backend.requests[0].max_tokens == 2


def test_instructions_and_items_reach_the_backend_as_chat_messages(gateway: Gateway) -> None:
    gateway.client().responses.create(
        model="test-model",
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Answer in English."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "A"},
                    {"type": "input_text", "text": "B"},
                ],
            },
        ],
        temperature=0.5,
        top_p=0.9,
        metadata={"ticket": "42"},
        store=True,
        user="u-1",
        text={"format": {"type": "text"}},
    )
    sent = gateway.backend.requests[-1]
    assert sent.messages is not None
    assert [(m.role, m.content) for m in sent.messages] == [
        ("system", "Be brief."),
        ("developer", "Answer in English."),
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "AB"),
    ]
    assert (sent.temperature, sent.top_p) == (0.5, 0.9)


def test_streamed_events_in_order(gateway: Gateway) -> None:
    stream = gateway.client().responses.create(model="test-model", input="Hi", stream=True)
    events = list(stream)
    assert [e.type for e in events] == EVENT_ORDER
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Hello, world!"
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == "Hello, world!"
    assert done.response.usage is not None and done.response.usage.output_tokens == 4
    assert (
        done.response.usage.model_extra and done.response.usage.model_extra["tollgate_cost_usd"] > 0
    )
    assert events[0].type == "response.created" and events[0].response.id == done.response.id


def test_stream_ends_incomplete_when_capped(gateway: Gateway) -> None:
    stream = gateway.client().responses.create(
        model="test-model", input="Hi", stream=True, max_output_tokens=2
    )
    last = list(stream)[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == "Hello,"


def test_stream_helper_accumulates_the_final_response(gateway: Gateway) -> None:
    with gateway.client().responses.stream(model="test-model", input="Hi") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == "Hello, world!"
    assert final.usage is not None and final.usage.total_tokens == 11


def test_sse_frames_name_their_events(gateway: Gateway) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        json={"model": "test-model", "input": "Hi", "stream": True},
        headers={"authorization": f"Bearer {gateway.key}"},
    ) as http:
        assert http.headers["content-type"].startswith("text/event-stream")
        frames = http.read().decode().strip().split("\n\n")
    names = [f.split("\n")[0].removeprefix("event: ") for f in frames]
    assert names == EVENT_ORDER  # every frame names its event, and no [DONE] follows


def test_mid_stream_failure_is_an_error_event(gateway: Gateway) -> None:
    gateway.backend.script = lambda _: Script(error_after=2, error_mid=Unavailable("gone"))
    events = list(gateway.client().responses.create(model="test-model", input="x", stream=True))
    kinds = [e.type for e in events]
    assert kinds[-1] == "error" and "response.completed" not in kinds
    assert events[-1].sequence_number == len(events) - 1
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello,"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, "text.format"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"extra_body": {"n": 2}}, "n"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": []}, "input"),
        ({"max_output_tokens": 10**9}, "max_output_tokens"),
    ],
)
def test_refusals_name_the_param(gateway: Gateway, kwargs: dict[str, Any], param: str) -> None:
    args: dict[str, Any] = {"model": "test-model", "input": "Hi", **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().responses.create(**args)
    assert info.value.param == param
    assert "max_completion_tokens" not in info.value.message and "messages" not in (
        info.value.message
    )  # chat's names never show through
    assert gateway.backend.requests == []


def test_errors_before_the_stream_are_the_envelope(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError):
        gateway.client().responses.create(model="missing", input="x", stream=True)
    bad = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="tg-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.responses.create(model="test-model", input="x")


def test_responses_are_metered_and_billed_like_chat(gateway: Gateway) -> None:
    client = gateway.client()
    chat = client.chat.completions.with_raw_response.create(
        model="test-model",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    )
    rows = _usage_rows(gateway, 1)
    chat_row = (rows[0].prompt_tokens, rows[0].completion_tokens, rows[0].cost_usd)
    resp = client.responses.with_raw_response.create(
        model="test-model", instructions="Be brief.", input="Hi"
    )
    rows = _usage_rows(gateway, 2)
    assert rows[0].requests == 2
    assert rows[0].prompt_tokens == 2 * chat_row[0]
    assert rows[0].completion_tokens == 2 * chat_row[1]
    assert rows[0].cost_usd == pytest.approx(2 * chat_row[2])
    assert resp.headers["x-tollgate-cost-usd"] == chat.headers["x-tollgate-cost-usd"]
    assert gateway.meter.observed == [("scripted", 7, 4)] * 2
