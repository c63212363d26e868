"""Quirks of text-generation-inference: /info limits, EOS, echo via /generate, error types."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.base import BackendError, BadRequest, Overloaded, Unavailable
from adapters.tgi import TGIBackend
from tests.adapters.harness import FAST, collect, request
from tests.fakes import Failure, FakeTGI

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]
TOKENS = ["Hello", ",", " world", "!"]


def backend_for(fake: FakeTGI, **options: Any) -> TGIBackend:
    return TGIBackend(
        "tgi-a",
        fake.url,
        {"m": "upstream-model"},
        timeouts=FAST,
        metrics_url=f"{fake.url}/metrics",
        options=options,
    )


async def test_eos_token_is_counted_but_not_shown() -> None:
    async with FakeTGI(TOKENS) as fake:
        backend = backend_for(fake)
        deltas = await collect(backend, request())
        await backend.aclose()
    assert "".join(d.text for d in deltas) == "Hello, world!"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 5


async def test_info_limits_refuse_oversize_requests_before_sending() -> None:
    async with FakeTGI(TOKENS, max_stop_sequences=2, max_total_tokens=64) as fake:
        backend = backend_for(fake)
        with pytest.raises(BadRequest) as too_many_stops:
            await collect(backend, request(stop=["a", "b", "c"]))
        with pytest.raises(BadRequest) as too_long:
            await collect(backend, request(max_tokens=64))
        await backend.aclose()
    assert too_many_stops.value.param == "stop"
    assert too_long.value.param == "max_tokens"
    assert fake.requests == []  # neither reached the server
    assert backend.capabilities.max_stop_sequences == 2
    assert backend.capabilities.max_context == 64


async def test_neutral_sampling_values_are_not_sent_as_tgi_refuses_them() -> None:
    async with FakeTGI(TOKENS) as fake:
        backend = backend_for(fake)
        deltas = await collect(backend, request(temperature=0.0, top_p=1.0, seed=7))
        await backend.aclose()
    params = fake.requests[0].body["parameters"]
    assert "temperature" not in params
    assert "top_p" not in params
    assert params["seed"] == 7
    assert params["details"] is True
    assert deltas[-1].finish_reason == "stop"


async def test_extras_reach_the_parameters() -> None:
    async with FakeTGI(TOKENS) as fake:
        backend = backend_for(fake)
        await collect(backend, request(extra={"top_k": 10, "repetition_penalty": 1.2}))
        await backend.aclose()
    params = fake.requests[0].body["parameters"]
    assert (params["top_k"], params["repetition_penalty"]) == (10, 1.2)


async def test_top_logprobs_via_top_n_tokens() -> None:
    async with FakeTGI(TOKENS) as fake:
        backend = backend_for(fake)
        deltas = await collect(backend, request(logprobs=2))
        await backend.aclose()
    assert fake.requests[0].body["parameters"]["top_n_tokens"] == 2
    assert deltas[0].logprobs is not None
    assert deltas[0].logprobs[0].top_logprobs == {"Hello": -0.5, "x": -2.0}


async def test_echo_uses_generate_with_prompt_logprobs() -> None:
    async with FakeTGI(TOKENS) as fake:
        backend = backend_for(fake)
        deltas = await collect(backend, request(max_tokens=2, echo=True, logprobs=1))
        await backend.aclose()
    assert fake.requests[0].path == "/generate"
    assert fake.requests[0].body["parameters"]["decoder_input_details"] is True
    echo = deltas[0]
    assert echo.echo
    assert echo.logprobs is not None
    assert [lp.logprob for lp in echo.logprobs][:2] == [None, -1.0]
    assert deltas[1].text == "Hello,"
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 2
    assert deltas[-1].usage.prompt_tokens == 5  # /generate's details have no input_length


async def test_overloaded_error_event_inside_the_stream() -> None:
    failure = Failure(
        "error_event", after=1, message="Model is overloaded", error_type="overloaded"
    )
    async with FakeTGI(TOKENS, failure=failure) as fake:
        backend = backend_for(fake)
        with pytest.raises(Overloaded, match="overloaded"):
            await collect(backend, request())
        await backend.aclose()


async def test_probe_reads_queue_and_batch() -> None:
    async with FakeTGI(TOKENS) as fake:
        backend = backend_for(fake)
        snapshot = await backend.probe()
        await backend.aclose()
    assert snapshot.healthy
    assert (snapshot.waiting, snapshot.running, snapshot.kv_usage) == (4, 9, None)


async def test_validation_errors_arrive_inside_a_200_stream_and_are_the_clients() -> None:
    async with FakeTGI(TOKENS) as fake:
        backend = backend_for(fake)
        with pytest.raises(BadRequest, match="`inputs` cannot be empty"):
            await collect(backend, request(prompt=""))
        await backend.aclose()


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("validation", BadRequest),
        ("template_error", BadRequest),
        ("missing_template_variable", BadRequest),
        ("tool_error", BadRequest),
        ("overloaded", Overloaded),
        ("generation", Unavailable),
        ("incomplete_generation", Unavailable),
        ("incomplete_generation_stream", Unavailable),
        ("stream_serialization_error", Unavailable),
    ],
)
async def test_every_error_type_tgi_sends(error_type: str, expected: type[BackendError]) -> None:
    failure = Failure("error_event", after=0, message="x", error_type=error_type)
    async with FakeTGI(TOKENS, failure=failure) as fake:
        backend = backend_for(fake)
        with pytest.raises(expected) as caught:
            await collect(backend, request())
        await backend.aclose()
    assert type(caught.value) is expected


async def test_info_gives_the_prompt_limit_apart_from_the_context() -> None:
    async with FakeTGI(TOKENS, max_input_tokens=8, max_total_tokens=64) as fake:
        backend = backend_for(fake)
        await backend.probe()
        await backend.aclose()
    assert (backend.capabilities.max_prompt, backend.capabilities.max_context) == (8, 64)
