"""Every network adapter, built by the gateway's own factory, driven through a live gateway.

One suite, parametrised over the protocol fakes and the real servers this machine can run
(``tests/real``): the official ``openai`` client talks to a real uvicorn running
``create_app(settings)`` whose only backend points at the upstream. A real server's answers
are checked against its own (``Harness.expected``); cases that need a failure on cue skip it.
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

from adapters.base import BackendError, BadRequest, ChatMessage, Overloaded, Unavailable
from gateway.app import create_app
from gateway.openai.templates import TEMPLATES
from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.models import UsageRow
from tests.adapters.harness import PROMPT, Harness, harness_for, harness_params
from tests.e2e.conftest import gateway_settings
from tests.fakes import Failure
from tests.gateway.doubles import PerTokenMeter
from tests.live import LiveServer
from tests.real import answers
from tests.real.answers import Answer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(20)]
TOKENS = ["Hello", ",", " world", "!", " Bye"]
TEXT = "Hello, world! Bye"
TEMPLATE = "gemma"  # the model's chat template; llama.cpp applies the GGUF's own (Gemma's)
# What the gateway answers for each adapter error class: status and the SDK's exception.
ANSWERS: dict[type[BackendError], tuple[int, type[openai.APIStatusError]]] = {
    Overloaded: (503, openai.InternalServerError),
    Unavailable: (503, openai.InternalServerError),
    BadRequest: (400, openai.BadRequestError),
}


@dataclass
class Stack:
    """An upstream (fake or real), the gateway in front of it, and a client for the gateway."""

    harness: Harness
    fake: Any  # the protocol's fake (signals, gates, recorded requests), or the real server
    url: str
    key: str
    store: MemoryStore

    @property
    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0)

    @property
    def fields(self) -> dict[str, Any]:
        """What every request of a case sends: the harness's fields (temperature 0 for a
        real model), in the SDK's terms."""
        return {k: v for k, v in self.harness.fields.items() if k != "model"}

    def scripted(self) -> Any:
        """The fake, to script; a real server cannot be, and the case is skipped."""
        if self.harness.real:
            pytest.skip(f"{self.harness.kind}: a real server cannot be made to fail on cue")
        return self.fake

    def expected(self, max_tokens: int, *, chat: bool = False) -> Answer:
        """The whole answer to PROMPT: the fakes' script, or what the real server says."""
        harness, server = self.harness, self.fake
        if not harness.real:
            shown = TOKENS[:max_tokens]
            if len(shown) < len(TOKENS):
                return Answer("".join(shown), "length", len(shown), harness.prompt_tokens)
            return Answer(TEXT, "stop", len(TOKENS) + harness.eos_tokens, harness.prompt_tokens)
        message = {"role": "user", "content": PROMPT}
        if harness.config_kind == "jetstream":  # the gateway renders chat for it
            rendered = TEMPLATES[TEMPLATE].render([ChatMessage(**message)])
            assert harness.reference is not None
            req = harness.request(max_tokens, prompt=rendered if chat else PROMPT)
            return harness.reference(server, req)
        body: dict[str, Any] = {
            "model": server.models["test-model"], "max_tokens": max_tokens, **self.fields,
        }
        body.update({"messages": [message]} if chat else {"prompt": PROMPT})
        return answers.llama_cpp(server.url, body)


@contextmanager
def _gateway(
    harness: Harness, upstream: Any, *, first_token_s: float | None = None
) -> Iterator[Stack]:
    """A live gateway whose one backend is built from settings pointing at ``upstream``."""
    timeouts = harness.timeouts
    backend: dict[str, Any] = {
        "name": f"{harness.kind}-a", "kind": harness.config_kind, "url": upstream.url,
        "models": {"test-model": "upstream-model"},
        "price": {"usd_per_hour": 4.0},
        "timeouts": {
            "connect_s": timeouts.connect, "total_s": timeouts.total,
            "first_token_s": first_token_s or timeouts.first_token,
        },
    }
    overrides: dict[str, Any] = {"backends": [backend]}
    if harness.real:
        backend["models"] = upstream.models
        backend["metrics_url"] = upstream.metrics_url
        model: dict[str, Any] = {"id": "test-model", "chat_template": TEMPLATE}
        if harness.config_kind == "vllm":  # Gemma's tokenizer: counts what llama.cpp does
            model["tokenizer"] = "embedded"
        overrides["models"] = [model]
    settings = gateway_settings(**overrides)
    store = MemoryStore()
    key = asyncio.run(store.create_key("team")).secret
    with LiveServer(create_app(settings, store=store, meter=PerTokenMeter())) as server:
        yield Stack(harness, upstream, server.url, key, store)


@pytest.fixture(params=harness_params())
def upstream(request: pytest.FixtureRequest) -> Iterator[tuple[Harness, Any]]:
    """Each protocol's fake in turn, then each real server, with its harness."""
    harness = harness_for(request)
    if harness.real:
        yield harness, harness.server
        return
    with harness.make_fake(tokens=TOKENS) as fake:
        yield harness, fake


@pytest.fixture
def stack(upstream: tuple[Harness, Any]) -> Iterator[Stack]:
    with _gateway(*upstream) as running:
        yield running


def _assert_usage(stack: Stack, usage: Any, expected: Answer) -> None:
    assert usage is not None
    assert usage.completion_tokens == expected.completion_tokens
    if stack.harness.prompt_tokens is not None:
        assert usage.prompt_tokens == stack.harness.prompt_tokens
    elif expected.prompt_tokens is not None:  # the server counts, in its unstreamed answers
        assert usage.prompt_tokens == expected.prompt_tokens
    else:  # the protocol reports none: the gateway estimates them
        assert usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# -- answers -------------------------------------------------------------------------------


def test_completion_text_and_usage(stack: Stack) -> None:
    n = stack.harness.answer_tokens
    resp = stack.client.completions.create(
        model="test-model", prompt=PROMPT, max_tokens=n, **stack.fields
    )
    expected = stack.expected(n)
    assert stack.harness.real or expected.text == TEXT
    assert resp.choices[0].text == expected.text
    assert resp.choices[0].finish_reason == expected.finish
    _assert_usage(stack, resp.usage, expected)


def test_streamed_completion_text_and_usage(stack: Stack) -> None:
    n = stack.harness.answer_tokens
    chunks = list(stack.client.completions.create(
        model="test-model", prompt=PROMPT, max_tokens=n, stream=True,
        stream_options={"include_usage": True}, **stack.fields,
    ))
    expected = stack.expected(n)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == expected.finish and not any(finishes[:-1])
    _assert_usage(stack, chunks[-1].usage, expected)


def test_streamed_chat_through_the_template_or_upstream(stack: Stack) -> None:
    n = stack.harness.answer_tokens
    chunks = list(stack.client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": PROMPT}], max_tokens=n,
        stream=True, **stack.fields,
    ))
    expected = stack.expected(n, chat=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish


def test_max_tokens_is_length(stack: Stack) -> None:
    resp = stack.client.completions.create(
        model="test-model", prompt=PROMPT, max_tokens=3, **stack.fields
    )
    expected = stack.expected(3)
    assert stack.harness.real or expected.text == "Hello, world"
    assert resp.choices[0].text == expected.text
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 3


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences_cut_the_text(stack: Stack, stream: bool) -> None:
    client, n = stack.client, stack.harness.answer_tokens
    stop, before = "!", "Hello, world"
    if stack.harness.real:  # a stop from the middle of what the server answers unstopped
        whole = stack.expected(n).text
        stop = whole[len(whole) // 2 :][:3]
        before = whole[: whole.index(stop)]
    if stream:
        chunks = list(client.completions.create(
            model="test-model", prompt=PROMPT, max_tokens=n, stop=[stop], stream=True,
            **stack.fields,
        ))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        resp = client.completions.create(model="test-model", prompt=PROMPT, max_tokens=n,
                                         stop=[stop], **stack.fields)
        text, finish = resp.choices[0].text, resp.choices[0].finish_reason
    assert text == before  # cut by the gateway even where the upstream keeps the stop
    assert finish == "stop"


# -- errors --------------------------------------------------------------------------------


COMMON_ERRORS = ("overloaded", "unavailable", "bad_request")


def _sdk_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A provoking request's fields as the SDK takes them (vendor extras in the body)."""
    sdk = {k: v for k, v in fields.items() if k != "extra"}
    if "extra" in fields:
        sdk["extra_body"] = fields["extra"]
    return sdk


def _provoke(stack: Stack, case: str) -> tuple[dict[str, Any], type[BackendError]]:
    """Script the fake's failure, or the request that makes the real server fail."""
    failure, fields, cls = stack.harness.provoke(case)
    if failure is not None:
        stack.fake.failure = failure
    return {**stack.fields, **_sdk_fields(fields)}, cls


@pytest.mark.parametrize("case", COMMON_ERRORS)
def test_upstream_errors_map_to_sdk_exceptions(stack: Stack, case: str) -> None:
    fields, cls = _provoke(stack, case)
    status, sdk_error = ANSWERS[cls]
    fields.setdefault("prompt", PROMPT)
    with pytest.raises(sdk_error) as caught:
        stack.client.completions.create(model="test-model", max_tokens=16, **fields)
    assert caught.value.status_code == status
    if case == "overloaded":  # the upstream's Retry-After where it sends one (TGI does not)
        wait = stack.fake.failure.headers.get("retry-after", "1")
        assert caught.value.response.headers["retry-after"] == wait


def test_protocol_specific_errors(upstream: tuple[Harness, Any]) -> None:
    """The protocol's other error answers (vLLM's 503 and 404, TGI's 500, gRPC INTERNAL)."""
    harness, fake = upstream
    extra = [case for case in harness.errors if case not in COMMON_ERRORS]
    if harness.real and not extra:
        pytest.skip(f"{harness.kind}: no request makes the server refuse it")
    assert extra
    for case in extra:
        # A fresh gateway per case: no circuit or cool-down left over from the last one.
        with _gateway(harness, fake) as stack:
            fields, cls = _provoke(stack, case)
            status, sdk_error = ANSWERS[cls]
            fields.setdefault("prompt", PROMPT)
            with pytest.raises(sdk_error) as caught:
                stack.client.completions.create(model="test-model", **fields)
        assert caught.value.status_code == status, case


def test_malformed_upstream_answer_is_502(stack: Stack) -> None:
    stack.scripted().failure = Failure("malformed")
    with pytest.raises(openai.InternalServerError) as caught:
        stack.client.completions.create(model="test-model", prompt=PROMPT, max_tokens=16)
    assert caught.value.status_code == 502


def test_upstream_silent_past_first_token_deadline_is_504(
    upstream: tuple[Harness, Any],
) -> None:
    harness, fake = upstream
    if not harness.real:
        fake.failure = Failure("hang")
    # A real server's first token is never within a millisecond.
    with _gateway(harness, fake, first_token_s=0.001 if harness.real else 1.0) as stack:
        with pytest.raises(openai.InternalServerError) as caught:
            stack.client.completions.create(
                model="test-model", prompt=PROMPT, max_tokens=2, **stack.fields
            )
        assert caught.value.status_code == 504
        assert harness.real or fake.cancelled.wait_sync(5)


def test_failure_mid_stream_reaches_the_sdk_after_the_first_chunks(stack: Stack) -> None:
    stack.scripted().failure = stack.harness.mid_stream_error  # after two tokens
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
    hold = stack.scripted().gate(2)  # the third token waits until released
    try:
        with httpx.stream(
            "POST", f"{stack.url}/v1/completions",
            headers={"authorization": f"Bearer {stack.key}"},
            json={"model": "test-model", "prompt": PROMPT, "max_tokens": 16, "stream": True},
            timeout=5,
        ) as response:
            assert response.status_code == 200
            assert next(line for line in response.iter_lines() if line.startswith("data:"))
        # The client is gone; the gateway must close its upstream stream (at once; the wait
        # is long only for a loaded CI machine: it once took over 5 s in a full suite run).
        assert stack.fake.cancelled.wait_sync(15)
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
