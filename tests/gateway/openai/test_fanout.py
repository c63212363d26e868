"""One request's fan-out (prompts x n): bounded upstream, capped, and billed when it breaks."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.tenancy.models import Limits
from tests.fakes._server import Recorded, Send, Signal
from tests.fakes.vllm import FakeVLLM
from tests.gateway.openai.conftest import FleetFactory, Upstream, sse_events

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(20)]


class Counting(FakeVLLM):
    """Counts the generations it runs at once; each decode step takes a few milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    async def handle(self, request: Recorded, send: Send) -> None:
        if request.method != "POST":
            await super().handle(request, send)
            return
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            await super().handle(request, send)
        finally:
            with self._lock:
                self.running -= 1

    async def pace(self, index: int) -> None:
        await asyncio.sleep(0.002)  # a decode step: generations overlap unless serialised
        await super().pace(index)


@pytest.mark.parametrize("stream", [False, True])
def test_a_tenant_limited_to_one_at_a_time_fans_out_one_generation_at_a_time(
    fleet: FleetFactory, stream: bool
) -> None:
    with Counting() as upstream:
        with fleet([Upstream("vllm", upstream)], Limits(max_concurrent=1)) as gw:
            body = {"model": "test-model", "prompt": ["a", "b", "c", "d"], "n": 5,
                    "max_tokens": 4, "stream": stream}  # fmt: skip
            response = gw.post("/v1/completions", body)
        billed = gw.ledger()
    assert response.status_code == 200, response.text
    if stream:
        indexes = {c["index"] for e in sse_events(response.content) for c in e["choices"]}
    else:
        indexes = {c["index"] for c in response.json()["choices"]}
    assert indexes == set(range(20))
    assert len(upstream.requests) == 20
    assert upstream.most == 1  # never more upstream than the tenant may run at once
    assert billed.completion_tokens == 80


def test_chat_n_is_capped_by_the_per_request_fan_out_limit(fleet: FleetFactory) -> None:
    server = {"max_generations_per_request": 4, "access_log": False}
    with FakeVLLM() as upstream, fleet([Upstream("vllm", upstream)], server=server) as gw:
        response = gw.post("/v1/chat/completions", {
            "model": "test-model", "messages": [{"role": "user", "content": "hi"}], "n": 5,
        })  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    assert upstream.requests == []


class OneFails(FakeVLLM):
    """Prompt "bad" fails (500, before any token) once ``release`` is set; others answer."""

    def __init__(self) -> None:
        super().__init__()
        self.release = Signal()
        self.first_sent = Signal()  # a good generation has sent its first token

    async def handle(self, request: Recorded, send: Send) -> None:
        body = request.body
        if request.method == "POST" and isinstance(body, dict) and body.get("prompt") == "bad":
            await self.release.wait()
            await self._error(send, 500, "injected failure")
            return
        await super().handle(request, send)

    async def pace(self, index: int) -> None:
        if index == 1:
            self.first_sent.set()
        await super().pace(index)


def test_when_one_generation_fails_the_tokens_the_others_received_are_billed(
    fleet: FleetFactory,
) -> None:
    with OneFails() as upstream:
        upstream.release = upstream.completed  # "bad" fails once "good" has answered in full
        with fleet([Upstream("vllm", upstream)]) as gw:
            body = {"model": "test-model", "prompt": ["good", "bad"], "max_tokens": 4}
            response = gw.post("/v1/completions", body)
        billed = gw.ledger()
    assert response.status_code == 503
    assert billed.requests == 1
    assert billed.completion_tokens == 4  # the good generation's whole answer
    assert billed.prompt_tokens == 1  # the fake counts "good" as one token


def test_when_one_generation_fails_to_start_a_stream_the_others_first_tokens_are_billed(
    fleet: FleetFactory,
) -> None:
    with OneFails() as upstream:
        upstream.release = upstream.first_sent
        hold = upstream.gate(1)  # the good generation stops after its first token
        with fleet([Upstream("vllm", upstream)]) as gw:
            body = {"model": "test-model", "prompt": ["good", "bad"], "max_tokens": 4,
                    "stream": True}  # fmt: skip
            response = gw.post("/v1/completions", body)
        hold.set()
        billed = gw.ledger()
    assert response.status_code == 503  # nothing had been sent: a plain error answer
    assert billed.completion_tokens == 1
    assert billed.prompt_tokens == 1
