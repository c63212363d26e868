"""Every network adapter, built by the gateway's own factory, driven through a live gateway.

One suite, parametrised over the four protocol fakes: the official ``openai`` client talks
to a real uvicorn running ``create_app(settings)`` whose only backend points at the fake.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from adapters.base import BackendError, BadRequest, Overloaded, Unavailable
from gateway.app import create_app
from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.models import UsageRow
from tests.adapters.harness import HARNESSES, PROMPT, Harness
from tests.e2e.conftest import gateway_settings
from tests.fakes import Failure
from tests.fakes._server import FakeUpstream
from tests.gateway.doubles import PerTokenMeter
from tests.live import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(20)]
TOKENS = ["Hello", ",", " world", "!", " Bye"]
TEXT = "Hello, world! Bye"
KINDS = sorted(HARNESSES)
# What the gateway answers for each adapter error class: status and the SDK's exception.
ANSWERS: dict[type[BackendError], tuple[int, type[openai.APIStatusError]]] = {
    Overloaded: (503, openai.InternalServerError),
    Unavailable: (503, openai.InternalServerError),
    BadRequest: (400, openai.BadRequestError),
}


@dataclass
class Stack:
    """A fake upstream, the gateway in front of it, and a client for the gateway."""

    harness: Harness
    fake: Any  # the protocol's fake (signals, gates, recorded requests)
    url: str
    key: str
    store: MemoryStore

    @property
    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0)


@contextmanager
def _gateway(
    harness: Harness, fake: FakeUpstream, *, first_token_s: float = 5.0
) -> Iterator[Stack]:
    """A live gateway whose one backend is built from settings pointing at ``fake``."""
    settings = gateway_settings(
        backends=[{
            "name": f"{harness.kind}-a", "kind": harness.config_kind, "url": fake.url,
            "models": {"test-model": "upstream-model"},
            "price": {"usd_per_hour": 4.0},
            "timeouts": {"connect_s": 2, "first_token_s": first_token_s, "total_s": 10},
        }]
    )
    store = MemoryStore()
    key = asyncio.run(store.create_key("team")).secret
    with LiveServer(create_app(settings, store=store, meter=PerTokenMeter())) as server:
        yield Stack(harness, fake, server.url, key, store)


@contextmanager
def _upstream(kind: str) -> Iterator[tuple[Harness, FakeUpstream]]:
    harness = HARNESSES[kind]
    with harness.make_fake(tokens=TOKENS) as fake:
        yield harness, fake


@pytest.fixture
def vllm() -> Iterator[tuple[Harness, FakeUpstream]]:
    with _upstream("vllm") as up:
        yield up


@pytest.fixture
def llama_cpp() -> Iterator[tuple[Harness, FakeUpstream]]:
    with _upstream("llama_cpp") as up:
        yield up


@pytest.fixture
def tgi() -> Iterator[tuple[Harness, FakeUpstream]]:
    with _upstream("tgi") as up:
        yield up


@pytest.fixture
def triton() -> Iterator[tuple[Harness, FakeUpstream]]:
    with _upstream("triton") as up:
        yield up


@pytest.fixture
def jetstream() -> Iterator[tuple[Harness, FakeUpstream]]:
    with _upstream("jetstream") as up:
        yield up


@pytest.fixture(params=KINDS)
def upstream(request: pytest.FixtureRequest) -> tuple[Harness, FakeUpstream]:
    """The fake of each protocol in turn, with its harness (expected counts, errors)."""
    up: tuple[Harness, FakeUpstream] = request.getfixturevalue(request.param)
    return up


@pytest.fixture
def stack(upstream: tuple[Harness, FakeUpstream]) -> Iterator[Stack]:
    with _gateway(*upstream) as running:
        yield running


def _assert_usage(stack: Stack, usage: Any) -> None:
    harness = stack.harness
    assert usage is not None
    assert usage.completion_tokens == len(TOKENS) + harness.eos_tokens
    if harness.prompt_tokens is not None:
        assert usage.prompt_tokens == harness.prompt_tokens
    else:  # the protocol reports none: the gateway estimates them
        assert usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# -- answers -------------------------------------------------------------------------------


def test_completion_text_and_usage(stack: Stack) -> None:
    resp = stack.client.completions.create(model="test-model", prompt=PROMPT, max_tokens=16)
    assert resp.choices[0].text == TEXT
    assert resp.choices[0].finish_reason == "stop"
    _assert_usage(stack, resp.usage)


def test_streamed_completion_text_and_usage(stack: Stack) -> None:
    chunks = list(stack.client.completions.create(
        model="test-model", prompt=PROMPT, max_tokens=16, stream=True,
        stream_options={"include_usage": True},
    ))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == TEXT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    _assert_usage(stack, chunks[-1].usage)


def test_streamed_chat_through_the_template_or_upstream(stack: Stack) -> None:
    chunks = list(stack.client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": PROMPT}], max_tokens=16,
        stream=True,
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT


def test_max_tokens_is_length(stack: Stack) -> None:
    resp = stack.client.completions.create(model="test-model", prompt=PROMPT, max_tokens=3)
    assert resp.choices[0].text == "Hello, world"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 3


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences_cut_the_text(stack: Stack, stream: bool) -> None:
    client = stack.client
    if stream:
        chunks = list(client.completions.create(
            model="test-model", prompt=PROMPT, max_tokens=16, stop=["!"], stream=True,
        ))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        resp = client.completions.create(model="test-model", prompt=PROMPT, max_tokens=16,
                                         stop=["!"])
        text, finish = resp.choices[0].text, resp.choices[0].finish_reason
    assert text == "Hello, world"  # cut by the gateway even where the upstream keeps the stop
    assert finish == "stop"


# -- errors --------------------------------------------------------------------------------


COMMON_ERRORS = ("overloaded", "unavailable", "bad_request")


@pytest.mark.parametrize("case", COMMON_ERRORS)
def test_upstream_errors_map_to_sdk_exceptions(stack: Stack, case: str) -> None:
    failure, cls = stack.harness.errors[case]
    stack.fake.failure = failure
    status, sdk_error = ANSWERS[cls]
    with pytest.raises(sdk_error) as caught:
        stack.client.completions.create(model="test-model", prompt=PROMPT, max_tokens=16)
    assert caught.value.status_code == status
    if case == "overloaded":  # the upstream's Retry-After where it sends one (TGI does not)
        wait = failure.headers.get("retry-after", "1")
        assert caught.value.response.headers["retry-after"] == wait


def test_protocol_specific_errors(upstream: tuple[Harness, FakeUpstream]) -> None:
    """The protocol's other error answers (vLLM's 503 and 404, TGI's 500, gRPC INTERNAL)."""
    harness, fake = upstream
    extra = {k: v for k, v in harness.errors.items() if k not in COMMON_ERRORS}
    assert extra
    for case, (failure, cls) in extra.items():
        fake.failure = failure
        status, sdk_error = ANSWERS[cls]
        # A fresh gateway per case: no circuit or cool-down left over from the last one.
        with _gateway(harness, fake) as stack, pytest.raises(sdk_error) as caught:
            stack.client.completions.create(model="test-model", prompt=PROMPT)
        assert caught.value.status_code == status, case


def test_malformed_upstream_answer_is_502(stack: Stack) -> None:
    stack.fake.failure = Failure("malformed")
    with pytest.raises(openai.InternalServerError) as caught:
        stack.client.completions.create(model="test-model", prompt=PROMPT, max_tokens=16)
    assert caught.value.status_code == 502


def test_upstream_silent_past_first_token_deadline_is_504(
    upstream: tuple[Harness, FakeUpstream],
) -> None:
    harness, fake = upstream
    fake.failure = Failure("hang")
    with _gateway(harness, fake, first_token_s=1.0) as stack:
        with pytest.raises(openai.InternalServerError) as caught:
            stack.client.completions.create(model="test-model", prompt=PROMPT, max_tokens=16)
        assert caught.value.status_code == 504
        assert fake.cancelled.wait_sync(5)


def test_failure_mid_stream_reaches_the_sdk_after_the_first_chunks(stack: Stack) -> None:
    stack.fake.failure = stack.harness.mid_stream_error  # after two tokens
    received: list[str] = []

    def read() -> None:
        stream = stack.client.completions.create(
            model="test-model", prompt=PROMPT, max_tokens=16, stream=True
        )
        for chunk in stream:
            received.extend(c.text for c in chunk.choices)

    with pytest.raises(openai.APIError):
        read()
    assert "".join(received) == "Hello,"


def test_client_disconnect_cancels_upstream(stack: Stack) -> None:
    hold = stack.fake.gate(2)  # the third token waits until released
    try:
        with httpx.stream(
            "POST", f"{stack.url}/v1/completions",
            headers={"authorization": f"Bearer {stack.key}"},
            json={"model": "test-model", "prompt": PROMPT, "max_tokens": 16, "stream": True},
            timeout=5,
        ) as response:
            assert response.status_code == 200
            assert next(line for line in response.iter_lines() if line.startswith("data:"))
        # The client is gone; the gateway must close its upstream stream.
        assert stack.fake.cancelled.wait_sync(5)
        assert not stack.fake.completed.is_set()
        # ... and still bill what the upstream delivered before it went.
        deadline = time.monotonic() + 5
        while not (rows := _usage(stack)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(rows) == 1 and rows[0].requests == 1
        assert 1 <= rows[0].completion_tokens <= 2
    finally:
        hold.set()


def _usage(stack: Stack) -> list[UsageRow]:
    rows = asyncio.run(stack.store.usage(tenant="team", start=0, end=time.time() + 60, group_by=[]))
    return [r for r in rows if r.requests]
