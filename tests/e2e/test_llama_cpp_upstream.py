"""The gateway in front of llama-cpp-python's server (its fake), driven by the official SDK.

What that server does that vLLM does not (``tests/fakes/llama_cpp.py``): answers a bad
field with a 500 naming its source file, refuses an over-long streamed prompt with an empty
200, has no ``/health``, sends no usage in streams, and aborts a running stream whenever
another request arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import openai
import pytest

from gateway.app import create_app
from gateway.tenancy.memory import MemoryStore
from tests.e2e.conftest import gateway_settings
from tests.fakes import FakeLlamaCpp, Signal
from tests.gateway.doubles import PerTokenMeter
from tests.live import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(30)]
TOKENS = [f" w{i}" for i in range(64)]


@dataclass
class Stack:
    """The fake server, a gateway in front of it, and the gateway's app."""

    fake: FakeLlamaCpp
    client: openai.OpenAI
    app: Any

    def breaker_state(self) -> str:
        return str(self.app.state.tollgate.router.breaker("llama").state.value)


@contextmanager
def _stack(fake: FakeLlamaCpp, **backend: Any) -> Iterator[Stack]:
    settings = gateway_settings(
        backends=[{
            "name": "llama", "kind": "vllm", "url": fake.url,
            "models": {"test-model": "fake.gguf"},
            "price": {"usd_per_hour": 1.0},
            "timeouts": {"connect_s": 2, "first_token_s": 5, "total_s": 20},
            **backend,
        }],
        routing={"breaker_failures": 3, "probe_interval_s": 0.05},
    )
    store = MemoryStore()
    key = asyncio.run(store.create_key("team")).secret
    app = create_app(settings, store=store, meter=PerTokenMeter())
    with LiveServer(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        yield Stack(fake, client, app)


@pytest.fixture
def stack() -> Iterator[Stack]:
    with FakeLlamaCpp(TOKENS, n_ctx=64) as fake, _stack(fake) as running:
        yield running


def test_a_bad_field_is_the_clients_400_and_never_opens_the_circuit(stack: Stack) -> None:
    for _ in range(4):  # more than breaker_failures
        with pytest.raises(openai.BadRequestError) as caught:
            stack.client.completions.create(
                model="test-model", prompt="Hi", max_tokens=4, extra_body={"top_k": "x"}
            )
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["param"] == "top_k"
        assert "app.py" not in error["message"] and "/opt" not in error["message"]
    assert stack.breaker_state() == "closed"
    answer = stack.client.completions.create(model="test-model", prompt="Hi", max_tokens=4)
    assert answer.choices[0].text == " w0 w1 w2 w3"


def test_an_empty_200_is_the_clients_400_and_never_opens_the_circuit(stack: Stack) -> None:
    too_long = "word " * 80  # past the server's 64-token context; the gateway knows no limit
    for _ in range(4):
        with pytest.raises(openai.BadRequestError):
            stack.client.completions.create(model="test-model", prompt=too_long, max_tokens=4)
    assert stack.breaker_state() == "closed"
    answer = stack.client.completions.create(model="test-model", prompt="Hi", max_tokens=2)
    assert answer.choices[0].finish_reason == "length"


def test_concurrent_answers_are_not_cut_short_by_each_other_or_the_probe(stack: Stack) -> None:
    hold = stack.fake.gate(5)
    stack.fake.probed = Signal()

    async def three() -> list[Any]:
        client = openai.AsyncOpenAI(
            base_url=str(stack.client.base_url), api_key=stack.client.api_key, max_retries=0
        )
        calls = asyncio.gather(*(
            client.completions.create(model="test-model", prompt="Hi", max_tokens=40)
            for _ in range(3)
        ))
        await stack.fake.received.wait()  # one stream is running, held at its 6th token...
        await stack.fake.probed.wait()  # ... while the gateway probes the server
        with anyio.move_on_after(0.5):  # sent on, the others would wait for the model at once
            await stack.fake.contended.wait()
        hold.set()
        answers = await calls
        await client.close()
        return list(answers)

    answers = asyncio.run(three())
    assert [a.choices[0].finish_reason for a in answers] == ["length"] * 3
    assert all(a.usage is not None and a.usage.completion_tokens == 40 for a in answers)
    assert stack.fake.interrupted == 0 and not stack.fake.contended.is_set()
    health = stack.app.state.tollgate.router.health()["llama"]
    assert health["healthy"]  # no /health route, and healthy all the same


def test_echo_with_logprobs_has_the_prompts_entries_and_offsets_from_its_start() -> None:
    prompt = "Say hello to the world"
    with FakeLlamaCpp(TOKENS, logits_all=True) as fake, _stack(fake) as stack:
        answer = stack.client.completions.create(
            model="test-model", prompt=prompt, max_tokens=3, echo=True, logprobs=1
        )
    choice = answer.choices[0]
    assert choice.text == prompt + " w0 w1 w2"
    assert choice.logprobs is not None and choice.logprobs.tokens is not None
    assert choice.logprobs.tokens == ["Say", " hello", " to", " the", " world", " w0", " w1", " w2"]
    assert choice.logprobs.token_logprobs is not None
    assert choice.logprobs.token_logprobs[0] is None  # the first prompt token has none
    assert choice.logprobs.text_offset == [0, 3, 9, 12, 16, 22, 25, 28]
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (6, 3)
