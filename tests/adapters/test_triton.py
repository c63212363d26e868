"""Quirks of Triton's generate extension with TensorRT-LLM: inputs, counts, in-stream errors."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.base import BadRequest, Overloaded, Unavailable
from adapters.triton import TritonBackend
from tests.adapters.harness import FAST, collect, request
from tests.fakes import Failure, FakeTriton

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]
TOKENS = ["Hello", ",", " world", "!"]


def backend_for(fake: FakeTriton, **options: Any) -> TritonBackend:
    return TritonBackend(
        "triton-a",
        fake.url,
        {"m": "ensemble"},
        timeouts=FAST,
        metrics_url=f"{fake.url}/metrics",
        options=options,
    )


def ensemble_request(**fields: Any) -> Any:
    req = request(**fields)
    req.model = "ensemble"
    return req


async def test_inputs_ask_for_exact_token_counts() -> None:
    async with FakeTriton(TOKENS) as fake:
        backend = backend_for(fake)
        deltas = await collect(backend, ensemble_request(stop=["!"], seed=4, extra={"top_k": 3}))
        await backend.aclose()
    sent = fake.requests[0]
    assert sent.path == "/v2/models/ensemble/generate_stream"
    assert sent.body["return_num_input_tokens"] is True
    assert sent.body["return_num_output_tokens"] is True
    assert sent.body["exclude_input_in_output"] is True
    assert (sent.body["stop_words"], sent.body["seed"], sent.body["top_k"]) == (["!"], 4, 3)
    assert deltas[-1].usage is not None
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (5, 4)


async def test_an_extra_the_model_has_no_input_for_is_refused_not_dropped() -> None:
    async with FakeTriton(TOKENS) as fake:  # Triton itself would ignore it without a word
        backend = backend_for(fake)
        with pytest.raises(BadRequest, match="takes no 'min_p'") as caught:
            await collect(backend, ensemble_request(extra={"min_p": 0.1}))
        await backend.aclose()
    assert caught.value.param == "min_p"
    assert fake.requests == []


async def test_an_ensemble_of_tensorrtllm_backend_0_19_gets_random_seed_and_no_count_asks() -> None:
    async with FakeTriton(TOKENS, version="0.19") as fake:
        backend = backend_for(fake)
        deltas = await collect(backend, ensemble_request(seed=4))
        await backend.aclose()
    sent = fake.requests[0].body
    assert sent["random_seed"] == 4 and "seed" not in sent
    assert "return_num_output_tokens" not in sent
    assert deltas[-1].usage is not None
    # No counts there: the prompt is the gateway's to count; one token per streamed response.
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (None, 4)


async def test_non_decoupled_model_uses_generate() -> None:
    async with FakeTriton(TOKENS) as fake:
        backend = backend_for(fake, stream=False)
        deltas = await collect(backend, ensemble_request(max_tokens=3))
        await backend.aclose()
    assert fake.requests[0].path == "/v2/models/ensemble/generate"
    assert fake.requests[0].body["stream"] is False
    assert deltas[0].text == "Hello, world"
    assert deltas[0].tokens == 3
    assert deltas[-1].finish_reason == "length"


async def test_without_counts_tokens_are_estimated_and_prompt_unknown() -> None:
    async with FakeTriton(TOKENS) as fake:
        backend = backend_for(fake, token_counts=False)
        deltas = await collect(backend, ensemble_request())
        await backend.aclose()
    assert "return_num_output_tokens" not in fake.requests[0].body
    assert deltas[-1].usage is not None
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (None, 4)


@pytest.mark.parametrize(
    ("message", "expected"),
    [("Exceeds maximum queue size", Overloaded), ("Encountered an error in forward", Unavailable)],
)
async def test_errors_inside_a_200_stream(message: str, expected: type[Exception]) -> None:
    failure = Failure("error_event", after=1, message=message)
    async with FakeTriton(TOKENS, failure=failure) as fake:
        backend = backend_for(fake)
        with pytest.raises(expected, match=message):
            await collect(backend, ensemble_request())
        await backend.aclose()


def test_input_names_can_be_renamed_for_custom_ensembles() -> None:
    backend = TritonBackend(
        "t", "http://127.0.0.1:9", {"m": "x"}, options={"input_names": {"seed": "random_seed"}}
    )
    body = backend._request(ensemble_request(seed=9))
    assert body["random_seed"] == 9
    assert "seed" not in body


async def test_probe_reads_trtllm_metrics() -> None:
    async with FakeTriton(TOKENS) as fake:
        backend = backend_for(fake)
        snapshot = await backend.probe()
        await backend.aclose()
    assert snapshot.healthy
    assert (snapshot.running, snapshot.waiting, snapshot.kv_usage) == (6, 3, 0.25)
