"""Quirks of OpenAI-compatible servers: chat, extras, usage, error bodies, logprobs, metrics."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.base import BadRequest, ChatMessage, GenerationRequest, Overloaded
from adapters.openai_compatible import OpenAICompatibleBackend
from tests.adapters.harness import FAST, collect, request
from tests.fakes import Failure, FakeVLLM

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]
TOKENS = ["Hello", ",", " world", "!"]


def backend_for(fake: FakeVLLM, **options: Any) -> OpenAICompatibleBackend:
    return OpenAICompatibleBackend(
        "vllm-a",
        fake.url,
        {"m": "upstream-model"},
        timeouts=FAST,
        api_key=fake.api_key,
        metrics_url=f"{fake.url}/metrics",
        options=options,
    )


async def test_chat_streams_content_and_ignores_the_role_chunk() -> None:
    async with FakeVLLM(TOKENS) as fake:
        backend = backend_for(fake)
        req = GenerationRequest(
            request_id="r",
            model="upstream-model",
            max_tokens=8,
            messages=[ChatMessage("system", "Be brief."), ChatMessage("user", "Hi there")],
        )
        deltas = await collect(backend, req)
        await backend.aclose()
    sent = fake.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"][1] == {"role": "user", "content": "Hi there"}
    assert "".join(d.text for d in deltas[:-1]) == "".join(TOKENS)
    assert all(d.text for d in deltas[:-1])  # the role chunk made no empty delta
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.prompt_tokens == 10  # the fake's count: words + 3 per message


async def test_usage_is_always_requested_and_extras_pass_through() -> None:
    async with FakeVLLM(TOKENS, api_key="sk-upstream") as fake:
        backend = backend_for(fake)
        extra = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "stop_token_ids": [7]}
        hostile = {"stream": False, "model": "other", "n": 3}
        req = request(temperature=0.2, seed=3, logit_bias={"50": -100.0}, extra=extra | hostile)
        await collect(backend, req)
        await backend.aclose()
    body = fake.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "upstream-model"
    assert "n" not in body
    assert {k: body[k] for k in extra} == extra
    assert (body["temperature"], body["seed"], body["logit_bias"]) == (0.2, 3, {"50": -100.0})
    assert fake.requests[0].headers["authorization"] == "Bearer sk-upstream"


async def test_server_without_usage_still_meters_what_arrived() -> None:
    async with FakeVLLM(TOKENS, send_usage=False) as fake:
        backend = backend_for(fake)
        deltas = await collect(backend, request())
        await backend.aclose()
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.prompt_tokens is None  # the gateway counts the prompt itself
    assert deltas[-1].usage.completion_tokens == len(TOKENS)


async def test_continuous_usage_stats_count_tokens_exactly() -> None:
    # Two tokens per chunk: counting one per chunk would say 2, the usage stats say 4.
    async with FakeVLLM(TOKENS, tokens_per_chunk=2) as fake:
        continuous, plain = backend_for(fake, continuous_usage_stats=True), backend_for(fake)
        exact = await collect(continuous, request())
        guessed = await collect(plain, request())
        await continuous.aclose()
        await plain.aclose()
    assert fake.requests[0].body["stream_options"]["continuous_usage_stats"] is True
    assert sum(d.tokens for d in exact[:-1]) == 4
    assert sum(d.tokens for d in guessed[:-1]) == 2  # the estimate (the final usage corrects it)
    assert guessed[-1].usage is not None and guessed[-1].usage.completion_tokens == 4


@pytest.mark.parametrize("style", ["nested", "flat", "trtllm"])
async def test_every_error_body_shape_is_read(style: str) -> None:
    failure = Failure("status", 400, message="prompt is too long")
    async with FakeVLLM(TOKENS, failure=failure, error_style=style) as fake:  # type: ignore[arg-type]
        backend = backend_for(fake)
        with pytest.raises(BadRequest, match="prompt is too long"):
            await collect(backend, request())
        await backend.aclose()


async def test_nested_error_param_is_kept() -> None:
    body = (
        b'{"error": {"message": "bad", "type": "BadRequestError", "param": "top_k", "code": 400}}'
    )
    async with FakeVLLM(TOKENS, failure=Failure("status", 400, body=body)) as fake:
        backend = backend_for(fake)
        with pytest.raises(BadRequest) as caught:
            await collect(backend, request())
        await backend.aclose()
    assert caught.value.param == "top_k"


async def test_retry_after_as_http_date_and_default() -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"  # in the past: retry now
    async with FakeVLLM(TOKENS, failure=Failure("status", 429, headers={"retry-after": date})) as f:
        backend = backend_for(f)
        with pytest.raises(Overloaded) as caught:
            await collect(backend, request())
        await backend.aclose()
    assert caught.value.retry_after == 1.0  # nothing usable in the future: the default


async def test_completion_logprobs_and_echo_are_parted() -> None:
    async with FakeVLLM(TOKENS) as fake:
        backend = backend_for(fake)
        req = GenerationRequest(
            request_id="r",
            model="upstream-model",
            max_tokens=3,
            prompt="a b c",
            logprobs=2,
            echo=True,
        )
        deltas = await collect(backend, req)
        await backend.aclose()
    echo, first = deltas[0], deltas[1]
    assert echo.echo
    assert echo.text == "a b c"
    assert echo.logprobs is not None
    assert [lp.token for lp in echo.logprobs] == ["a", " b", " c"]
    assert echo.logprobs[0].logprob is None
    assert "".join(d.text for d in deltas[1:]) == "Hello, world"
    assert first.logprobs is not None
    assert first.logprobs[0].top_logprobs == {"Hello": -0.5, "x": -2.0}
    assert sum(d.tokens for d in deltas[1:]) == 3
    assert sum(len(d.logprobs or ()) for d in deltas[1:]) == 3  # one per token, in order
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 3


async def test_chat_logprobs() -> None:
    async with FakeVLLM(TOKENS) as fake:
        backend = backend_for(fake)
        req = GenerationRequest(
            request_id="r",
            model="upstream-model",
            max_tokens=2,
            messages=[ChatMessage("user", "hi")],
            logprobs=1,
        )
        deltas = await collect(backend, req)
        await backend.aclose()
    assert fake.requests[0].body["top_logprobs"] == 1
    assert deltas[0].logprobs is not None
    assert deltas[0].logprobs[0].top_logprobs == {"Hello": -0.5}


async def test_probe_reads_prometheus_metrics() -> None:
    async with FakeVLLM(TOKENS) as fake:
        backend = backend_for(fake)
        snapshot = await backend.probe()
        await backend.aclose()
    assert snapshot.healthy
    assert (snapshot.running, snapshot.waiting, snapshot.kv_usage) == (3, 2, 0.25)


async def test_trtllm_metrics_are_the_stats_since_the_last_read() -> None:
    async with FakeVLLM(TOKENS, error_style="trtllm") as fake:
        backend = backend_for(fake)
        await collect(backend, request())
        busy = await backend.probe()
        idle = await backend.probe()  # nothing ran since: trtllm-serve answers []
        await backend.aclose()
    assert (busy.running, busy.waiting, busy.kv_usage) == (3, 2, 0.25)
    assert idle.healthy and (idle.running, idle.waiting) == (0, 0)


async def test_trtllm_serve_refuses_an_unknown_field_as_the_clients_error() -> None:
    async with FakeVLLM(TOKENS, error_style="trtllm") as fake:
        backend = backend_for(fake)
        with pytest.raises(BadRequest, match="Extra inputs are not permitted"):
            await collect(backend, request(extra={"guided_json": {}}))
        await backend.aclose()


async def test_the_context_length_vllm_states_becomes_max_context() -> None:
    async with FakeVLLM(TOKENS, served_model="upstream-model", max_model_len=2048) as fake:
        backend = backend_for(fake)
        assert backend.capabilities.max_context is None
        await backend.probe()
        learned = backend.capabilities.max_context
        configured = backend_for(fake, max_context=1024)
        await configured.probe()
        await backend.aclose()
        await configured.aclose()
    assert learned == 2048
    assert configured.capabilities.max_context == 1024  # config wins


async def test_base_url_ending_in_v1_is_not_doubled() -> None:
    async with FakeVLLM(TOKENS) as fake:
        backend = OpenAICompatibleBackend("o", f"{fake.url}/v1", {"m": "upstream-model"})
        await collect(backend, request())
        await backend.aclose()
    assert fake.requests[0].path == "/v1/completions"


def test_capabilities_follow_options() -> None:
    backend = OpenAICompatibleBackend(
        "o", "http://127.0.0.1:9", {"m": "x"}, options={"chat": False, "max_logprobs": 5}
    )
    caps = backend.capabilities
    assert (caps.chat, caps.logprobs, caps.token_prompts, caps.stop, caps.seed) == (
        False,
        5,
        True,
        True,
        True,
    )
