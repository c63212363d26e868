"""Quirks of llama-cpp-python's server (and of any server that streams no usage or echo)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from adapters.base import BackendError, BadRequest, Timeouts
from adapters.openai_compatible import OpenAICompatibleBackend
from tests.adapters.harness import FAST, PROMPT, collect, request, stream_of
from tests.fakes import FakeLlamaCpp

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]
TOKENS = ["Hello", ",", " world", "!", " Bye"]


def backend_for(fake: Any, **options: Any) -> OpenAICompatibleBackend:
    return OpenAICompatibleBackend(
        "llama", fake.url, {"m": "fake.gguf"}, timeouts=FAST, options=options
    )


async def test_a_server_without_health_route_is_healthy_while_it_answers() -> None:
    async with FakeLlamaCpp(TOKENS) as fake:
        backend = backend_for(fake)
        up = await backend.probe()
        fake.healthy = False  # a proxy answers 503 for the process that is gone
        down = await backend.probe()
        await backend.aclose()
    assert up.healthy and "no health route" in up.detail
    assert not down.healthy


async def test_answers_run_one_at_a_time_so_none_is_cut_short() -> None:
    async with FakeLlamaCpp(TOKENS) as fake:
        backend = backend_for(fake)
        hold = fake.gate(2)
        first = asyncio.ensure_future(collect(backend, request()))
        await fake.received.wait()
        second = asyncio.ensure_future(collect(backend, request()))
        # Sent to the server, the second would wait for its model at once; it must not.
        with anyio.move_on_after(0.5):
            await fake.contended.wait()
        assert not fake.contended.is_set()
        hold.set()
        answers = await asyncio.gather(first, second)
        await backend.aclose()
    assert fake.interrupted == 0
    assert [a[-1].finish_reason for a in answers] == ["stop", "stop"]


async def test_an_empty_200_is_a_refusal_of_the_request() -> None:
    async with FakeLlamaCpp(TOKENS, n_ctx=4) as fake:  # PROMPT is 5 words + BOS
        backend = backend_for(fake)
        with pytest.raises(BadRequest):
            await collect(backend, request())
        await backend.aclose()


async def test_without_usage_the_token_completing_a_stop_is_counted() -> None:
    async with FakeLlamaCpp(TOKENS) as fake:  # it sends that token with no text
        backend = backend_for(fake)
        deltas = await collect(backend, request(stop=["!"]))
        await backend.aclose()
    assert "".join(d.text for d in deltas) == "Hello, world"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 4  # as its unstreamed usage says


async def test_echo_with_logprobs_is_asked_unstreamed_and_parted_at_the_prompt() -> None:
    async with FakeLlamaCpp(TOKENS, logits_all=True) as fake:
        backend = backend_for(fake)
        deltas = await collect(backend, request(max_tokens=3, echo=True, logprobs=1))
        await backend.aclose()
    assert fake.requests[-1].body["stream"] is False
    echo, output, final = deltas
    assert echo.echo and echo.text == PROMPT
    assert echo.logprobs is not None and "".join(lp.token for lp in echo.logprobs) == PROMPT
    assert echo.logprobs[0].logprob is None
    assert output.text == "Hello, world" and output.tokens == 3
    assert output.logprobs is not None and len(output.logprobs) == 3
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (6, 3)  # BOS counted


@pytest.fixture(
    params=[
        "fake",
        pytest.param("llama_cpp_real", marks=[pytest.mark.slow, pytest.mark.real_model,
                                              pytest.mark.timeout(300)]),
    ]
)
def llama(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The fake, then llama-cpp-python's real server (``make real-llama-cpp``)."""
    if request.param == "llama_cpp_real":
        yield request.getfixturevalue("real_llama_cpp")
        return
    with FakeLlamaCpp([f" w{i}" for i in range(64)]) as fake:
        yield fake


async def test_a_stream_the_server_interrupts_is_never_a_whole_answer(llama: Any) -> None:
    """Sent on at once (``serial: false``), a second request cuts the running stream short:
    ``[DONE]`` without a ``finish_reason``, then the connection dropped. That is an error,
    never an answer; the request that cut it gets its whole answer."""
    fake = llama if isinstance(llama, FakeLlamaCpp) else None
    model = "fake.gguf" if fake else llama.models["test-model"]
    backend = OpenAICompatibleBackend(
        "llama", llama.url, {"m": model}, options={"serial": False},
        timeouts=Timeouts(connect=5.0, first_token=30.0, total=60.0),
    )
    hold = fake.gate(3) if fake else None
    first = stream_of(backend, request(max_tokens=300, model=model, temperature=0.0))
    await anext(first)
    second = asyncio.ensure_future(
        collect(backend, request(max_tokens=4, model=model, temperature=0.0))
    )
    if fake and hold:
        await fake.contended.wait()  # the second waits for the model...
        hold.set()  # ... and the first, going on, sees it
    with pytest.raises(BackendError):
        async for _ in first:
            pass
    answer = await second
    await backend.aclose()
    assert answer[-1].finish_reason == "length"
    assert fake is None or fake.interrupted == 1


async def test_concurrent_answers_are_all_whole(llama: Any) -> None:
    """As it is learned (``/openapi.json``), the server gets one request at a time."""
    fake = llama if isinstance(llama, FakeLlamaCpp) else None
    model = "fake.gguf" if fake else llama.models["test-model"]
    backend = OpenAICompatibleBackend(
        "llama", llama.url, {"m": model},
        timeouts=Timeouts(connect=5.0, first_token=30.0, total=60.0),
    )
    answers = await asyncio.gather(*(
        collect(backend, request(max_tokens=48, model=model, temperature=0.0)) for _ in range(3)
    ))
    await backend.aclose()
    assert [a[-1].finish_reason for a in answers] == ["length"] * 3
    assert fake is None or fake.interrupted == 0
