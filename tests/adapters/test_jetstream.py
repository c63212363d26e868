"""Quirks of JetStream over gRPC: minimal requests, 0.2.x streams, inferred finish, metrics."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.base import GenerationRequest
from adapters.jetstream import JetStreamBackend
from tests.adapters.harness import FAST, collect, request
from tests.fakes import FakeJetStream

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]
TOKENS = ["Hello", ",", " world", "!"]


def backend_for(fake: FakeJetStream, **options: Any) -> JetStreamBackend:
    return JetStreamBackend(
        "js",
        fake.url,
        {"m": "gemma"},
        timeouts=FAST,
        api_key=fake.api_key,
        metrics_url=fake.metrics_url,
        options=options,
    )


def _sent_fields(fake: FakeJetStream) -> set[str]:
    return {field.name for field, _ in fake.requests[0].body.ListFields()}


async def test_only_fields_every_version_knows_are_sent() -> None:
    async with FakeJetStream(TOKENS, api_key="tok") as fake:
        backend = backend_for(fake)
        deltas = await collect(backend, request(max_tokens=8))
        await backend.aclose()
    assert _sent_fields(fake) == {"max_tokens", "text_content"}
    assert fake.requests[0].headers["authorization"] == "Bearer tok"
    assert "".join(d.text for d in deltas) == "Hello, world!"
    assert deltas[-1].finish_reason == "stop"


async def test_configured_fields_are_sent() -> None:
    async with FakeJetStream(TOKENS, version="0.2") as fake:
        backend = backend_for(fake, priority=1, has_bos=True)
        await collect(backend, request())
        await backend.aclose()
    assert _sent_fields(fake) == {"max_tokens", "text_content", "priority", "has_bos"}


@pytest.mark.parametrize("version", ["0.2", "current"])
async def test_finish_is_inferred_and_the_trailing_empty_sample_ignored(version: str) -> None:
    async with FakeJetStream(TOKENS, version=version) as fake:  # type: ignore[arg-type]
        backend = backend_for(fake)
        capped = await collect(backend, request(max_tokens=3))
        whole = await collect(backend, request(max_tokens=10))
        await backend.aclose()
    assert capped[-1].finish_reason == "length"
    assert whole[-1].finish_reason == "stop"
    assert [d.tokens for d in whole[:-1]] == [1, 1, 1, 1]  # no delta for the empty sample
    assert whole[-1].usage is not None
    assert (whole[-1].usage.prompt_tokens, whole[-1].usage.completion_tokens) == (None, 4)


async def test_token_prompts_are_sent_as_token_content() -> None:
    async with FakeJetStream(TOKENS) as fake:
        backend = backend_for(fake)
        req = GenerationRequest(
            request_id="r", model="gemma", max_tokens=2, prompt_token_ids=[2, 651, 6037]
        )
        deltas = await collect(backend, req)
        await backend.aclose()
    assert list(fake.requests[0].body.token_content.token_ids) == [2, 651, 6037]
    assert sum(d.tokens for d in deltas) == 2
    assert deltas[-1].finish_reason == "length"


@pytest.mark.parametrize("version", ["0.2", "current"])
async def test_probe_reads_health_and_both_slot_metrics(version: str) -> None:
    async with FakeJetStream(TOKENS, version=version, metrics=True) as fake:  # type: ignore[arg-type]
        backend = backend_for(fake)
        snapshot = await backend.probe()
        await backend.aclose()
    assert snapshot.healthy
    # Current servers count every backlog (prefill 5 + generate 1); 0.2.x the prefill one.
    assert (snapshot.waiting, snapshot.kv_usage) == (6 if version == "current" else 5, 0.5)


async def test_load_from_the_kv_gauge_alone_is_a_percentage() -> None:
    async with FakeJetStream(TOKENS, metrics=True) as fake:
        backend = backend_for(fake)
        text = "num_requests_waiting{id=\"a\"} 2\nkv_cache_utilization_perc{id=\"a\"} 75.0\n"
        fake.metrics_body = text.encode()
        snapshot = await backend.probe()
        await backend.aclose()
    assert (snapshot.waiting, snapshot.kv_usage) == (2, 0.75)


def test_tls_without_verification_is_refused() -> None:
    with pytest.raises(ValueError, match="tls_ca_file"):
        JetStreamBackend("js", "grpcs://tpu:9000", {"m": "g"}, tls_insecure=True)
