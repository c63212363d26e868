"""Upstreams that hang or break: fallback while nothing reached the client, bounded waits.

Each test puts a failing fake vLLM first in the plan (it is the cheaper one) and, where there
is one, a healthy fake second; the gateway runs the real ``vllm`` adapter against both.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.fakes import Failure
from tests.fakes.vllm import FakeVLLM
from tests.gateway.openai.conftest import FleetFactory, Upstream, sse_events

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(20)]
ANSWER = "Hello, world! How are you?"  # the fakes' eight tokens
BODY = {"model": "test-model", "prompt": "Hi there", "max_tokens": 8}


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(str(e["choices"][0]["text"]) for e in events)


@pytest.mark.parametrize("stream", [False, True])
def test_a_backend_hanging_before_its_first_token_falls_back(
    fleet: FleetFactory, stream: bool
) -> None:
    with FakeVLLM(failure=Failure("hang")) as hung, FakeVLLM() as healthy:
        upstreams = [  # the same first-token timeout for both: no time left after the first
            Upstream("hung", hung, 1.0, timeouts={"first_token_s": 1.0}),
            Upstream("healthy", healthy, 3.0, timeouts={"first_token_s": 1.0}),
        ]
        with fleet(upstreams) as gw:
            started = time.monotonic()
            response = gw.post("/v1/completions", {**BODY, "stream": stream})
            waited = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.headers["x-tollgate-backend"] == "healthy"
    body = response.content
    text = _text(sse_events(body)) if stream else response.json()["choices"][0]["text"]
    assert text == ANSWER
    assert waited < 5  # the first-token timeout, then the healthy backend
    assert hung.cancelled.wait_sync(5)  # the hung attempt was closed upstream


def test_a_first_token_far_past_its_prediction_is_given_up_while_another_backend_remains(
    fleet: FleetFactory,
) -> None:
    with FakeVLLM(failure=Failure("hang")) as hung, FakeVLLM() as healthy:
        upstreams = [
            # A minute to the first token would be allowed, but 10 ms is what is predicted.
            Upstream("hung", hung, 1.0, timeouts={"first_token_s": 60, "give_up_floor_s": 0.3},
                     capacity={"ttft_s": 0.01}),
            Upstream("healthy", healthy, 3.0),
        ]  # fmt: skip
        with fleet(upstreams) as gw:
            started = time.monotonic()
            response = gw.post("/v1/completions", BODY)
            waited = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == ANSWER
    assert waited < 3


class SlowStart(FakeVLLM):
    """An upstream whose first token takes half a second (a long prefill)."""

    async def pace(self, index: int) -> None:
        if index == 0:
            await asyncio.sleep(0.5)
        await super().pace(index)


def test_a_lone_backend_is_waited_for_past_its_prediction(fleet: FleetFactory) -> None:
    with SlowStart() as slow:
        upstreams = [Upstream("slow", slow, timeouts={"give_up_floor_s": 0.1},
                              capacity={"ttft_s": 0.001})]  # fmt: skip
        with fleet(upstreams) as gw:
            response = gw.post("/v1/completions", BODY)
    # Nobody to fall back to: a first token later than predicted is still an answer.
    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == ANSWER


def test_a_stream_stalled_mid_answer_ends_after_the_inter_token_timeout(
    fleet: FleetFactory,
) -> None:
    with FakeVLLM(failure=Failure("hang", after=2)) as stalling:
        upstreams = [Upstream("stalling", stalling, timeouts={"inter_token_s": 0.5})]
        with fleet(upstreams) as gw:
            started = time.monotonic()
            response = gw.post("/v1/completions", {**BODY, "stream": True})
            waited = time.monotonic() - started
        billed = gw.ledger()
    assert response.status_code == 200
    events = sse_events(response.content)
    assert _text(events[:-1]) == "Hello,"
    error = events[-1]["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "backend_timeout"
    assert waited < 5  # not the 30 s total deadline
    assert stalling.cancelled.wait_sync(5)
    assert billed.completion_tokens == 2  # what was delivered is metered


def test_a_non_streamed_answer_broken_after_three_tokens_restarts_on_the_next_backend(
    fleet: FleetFactory,
) -> None:
    with FakeVLLM(failure=Failure("drop", after=3)) as breaking, FakeVLLM() as healthy:
        upstreams = [Upstream("breaking", breaking, 1.0), Upstream("healthy", healthy, 3.0)]
        with fleet(upstreams) as gw:
            response = gw.post("/v1/completions", BODY)
        billed = gw.ledger()
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == ANSWER
    assert response.json()["usage"]["completion_tokens"] == 8
    assert response.headers["x-tollgate-backend"] == "healthy"
    # The tenant pays for the answer it got; the broken attempt's tokens were run by the
    # first backend and count in its window totals (instance cost stays conserved).
    assert billed.requests == 1 and billed.completion_tokens == 8
    assert [(b, out) for b, _, out in gw.meter.observed] == [("breaking", 3), ("healthy", 8)]


def test_a_streamed_answer_broken_midway_is_not_restarted(fleet: FleetFactory) -> None:
    with FakeVLLM(failure=Failure("drop", after=3)) as breaking, FakeVLLM() as healthy:
        upstreams = [Upstream("breaking", breaking, 1.0), Upstream("healthy", healthy, 3.0)]
        with fleet(upstreams) as gw:
            response = gw.post("/v1/completions", {**BODY, "stream": True})
        billed = gw.ledger()
    events = sse_events(response.content)
    assert _text(events[:-1]) == "Hello, world"
    assert "error" in events[-1]
    assert healthy.requests == []  # bytes had reached the client: no second answer
    assert billed.completion_tokens == 3
