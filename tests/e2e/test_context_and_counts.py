"""Context limits and prompt counts through a live gateway, with Gemma's real tokenizer.

JetStream reports no usage, so what a tenant is billed for the prompt is the gateway's count;
and past its prefill length it keeps the prompt's last tokens without a word, so only the
gateway can refuse. The tokenizer is Gemma 3's, saved as the sentencepiece file an operator
names in ``models[].tokenizer``; the engine's tokenizer (checked against transformers in
``tests/engine``) says what a Gemma server tokenizes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from engine.config import EngineConfig
from engine.loading import load_tokenizer
from engine.tokenizer import GemmaTokenizer
from gateway.app import create_app
from gateway.tenancy.memory import MemoryStore
from tests.e2e.conftest import gateway_settings
from tests.fakes import FakeJetStream, FakeLlamaCpp
from tests.gateway.doubles import PerTokenMeter
from tests.live import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.real_model, pytest.mark.timeout(60)]
WORDS = " ".join(["alpha"] * 40)  # 40 words, 41 tokens with BOS


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> tuple[GemmaTokenizer, Path]:
    tokenizer = load_tokenizer(EngineConfig())
    path = tmp_path_factory.mktemp("tokenizer") / "gemma.model"
    tokenizer.save(path)
    return tokenizer, path


@contextmanager
def _gateway(model_file: Path, *backends: dict[str, Any]) -> Iterator[openai.OpenAI]:
    settings = gateway_settings(
        models=[{"id": "gemma", "tokenizer": str(model_file), "chat_template": "gemma"}],
        backends=[
            {
                "kind": "jetstream",
                "models": {"gemma": "gemma"},
                "price": {"usd_per_hour": 1.0},
                "timeouts": {"connect_s": 2, "first_token_s": 5, "total_s": 10},
                **backend,
            }
            for backend in backends
        ],
    )
    store = MemoryStore()
    key = asyncio.run(store.create_key("team")).secret
    with LiveServer(create_app(settings, store=store, meter=PerTokenMeter())) as server:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def test_a_prompt_past_jetstreams_context_is_refused_before_it_is_sent(
    gemma: tuple[GemmaTokenizer, Path],
) -> None:
    tokenizer, path = gemma
    assert len(tokenizer.encode(WORDS)) == 41
    with FakeJetStream() as fake, _gateway(
        path, {"name": "js", "url": fake.url, "options": {"max_context": 32}}
    ) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model="gemma", prompt=WORDS, max_tokens=4)
        assert fake.requests == []
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")
    assert "maximum context length is 32 tokens" in error["message"]
    assert "41 in the prompt, 4 in the completion" in error["message"]


def test_the_request_goes_to_the_backend_whose_window_holds_it(
    gemma: tuple[GemmaTokenizer, Path],
) -> None:
    _, path = gemma
    with FakeJetStream() as small, FakeJetStream() as large, _gateway(
        path,
        {"name": "small", "url": small.url, "options": {"max_context": 32}},
        {"name": "large", "url": large.url, "options": {"max_context": 4096}},
    ) as client:
        answer = client.completions.create(model="gemma", prompt=WORDS, max_tokens=4)
        assert small.requests == [] and len(large.requests) == 1
    assert answer.choices[0].text


def test_a_default_completion_is_cut_to_the_room_jetstream_has_left(
    gemma: tuple[GemmaTokenizer, Path],
) -> None:
    tokenizer, path = gemma
    messages = [{"role": "user", "content": "Say hi"}]
    rendered = "<start_of_turn>user\nSay hi<end_of_turn>\n<start_of_turn>model\n"
    prompt = len(tokenizer.encode(rendered))
    with FakeJetStream() as fake, _gateway(
        path, {"name": "js", "url": fake.url, "options": {"max_context": 32}}
    ) as client:
        answer = client.chat.completions.create(model="gemma", messages=messages)  # type: ignore[arg-type]
        assert fake.requests[0].body.max_tokens == 32 - prompt
    assert answer.usage is not None


def test_prompt_tokens_billed_are_what_the_server_tokenized(
    gemma: tuple[GemmaTokenizer, Path],
) -> None:
    tokenizer, path = gemma
    messages = [{"role": "user", "content": "Say hi"}]
    rendered = "<start_of_turn>user\nSay hi<end_of_turn>\n<start_of_turn>model\n"
    with FakeJetStream() as fake, _gateway(path, {"name": "js", "url": fake.url}) as client:
        text = client.completions.create(model="gemma", prompt="Hello world", max_tokens=2)
        chat = client.chat.completions.create(
            model="gemma", messages=messages, max_tokens=2  # type: ignore[arg-type]
        )
    assert text.usage is not None and chat.usage is not None
    assert text.usage.prompt_tokens == len(tokenizer.encode("Hello world")) == 3  # BOS counted
    # The template's turn markers are one token each, not their spelling's pieces.
    assert chat.usage.prompt_tokens == len(tokenizer.encode(rendered)) == 11


def test_completion_tokens_billed_include_the_stop_a_usage_less_server_generated(
    gemma: tuple[GemmaTokenizer, Path],
) -> None:
    _, path = gemma
    tokens = ["Hello", ",", " world", "!", " Bye", " now"]
    with FakeLlamaCpp(tokens, tokenizer=gemma[0].encode) as fake:
        settings = gateway_settings(
            models=[{"id": "gemma", "tokenizer": str(path)}],
            backends=[{
                "name": "llama", "kind": "vllm", "url": fake.url,
                "models": {"gemma": "fake.gguf"}, "price": {"usd_per_hour": 1.0},
            }],
        )
        store = MemoryStore()
        key = asyncio.run(store.create_key("team")).secret
        with LiveServer(create_app(settings, store=store, meter=PerTokenMeter())) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
            client.completions.create(model="gemma", prompt="Hi", max_tokens=2)  # learns it
            answer = client.completions.create(
                model="gemma", prompt="Hello world", max_tokens=16, stop=["!"]
            )
            direct = client.with_options(base_url=f"{fake.url}/v1").completions.create(
                model="fake.gguf", prompt="Hello world", max_tokens=16, stop=["!"]
            )
    assert answer.choices[0].text == direct.choices[0].text == "Hello, world"
    assert answer.usage is not None and direct.usage is not None
    assert answer.usage.completion_tokens == direct.usage.completion_tokens == 4
    assert answer.usage.prompt_tokens == direct.usage.prompt_tokens == 3
