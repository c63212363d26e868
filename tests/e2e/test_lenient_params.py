"""OpenAI's service hints are accepted and dropped; what would change the answer is refused."""

from __future__ import annotations

import asyncio

import openai
import pytest

from gateway.app import create_app
from gateway.tenancy.memory import MemoryStore
from tests.e2e.conftest import Gateway, gateway_settings
from tests.gateway.doubles import PerTokenMeter, ScriptedBackend
from tests.live import LiveServer

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Hi"}]


def test_service_hints_are_accepted_and_not_passed_on(gateway: Gateway) -> None:
    client = gateway.client()
    answer = client.chat.completions.create(
        model="test-model",
        messages=MESSAGES,  # type: ignore[arg-type]
        service_tier="auto",
        reasoning_effort="low",
        store=False,
        metadata={"app": "demo"},
        modalities=["text"],
        prompt_cache_key="k1",
        safety_identifier="u-123",
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
    )
    assert "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    completion = client.completions.create(
        model="test-model", prompt="x", max_tokens=2, extra_body={"service_tier": "flex"}
    )
    assert completion.choices[0].text
    for request in gateway.backend.requests:
        assert "service_tier" not in request.extra and "reasoning_effort" not in request.extra


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"frobnicate": True}, "frobnicate"),
    ],
)
def test_what_changes_the_answer_or_nobody_named_is_refused(
    gateway: Gateway, extra: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        gateway.client().chat.completions.create(
            model="test-model",
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_body=extra,
        )
    error = raised.value.body
    assert isinstance(error, dict) and error["param"] == param
    assert not gateway.backend.requests


def test_drop_params_names_more_fields_or_all() -> None:
    for dropped, passes in ((["frobnicate"], True), (["*"], True), ([], False)):
        store = MemoryStore()
        key = asyncio.run(store.create_key("team-a")).secret
        settings = gateway_settings(server={"access_log": False, "drop_params": dropped})
        app = create_app(settings, store=store, backends=[ScriptedBackend()], meter=PerTokenMeter())
        with LiveServer(app) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
            try:
                client.completions.create(
                    model="test-model", prompt="x", max_tokens=2, extra_body={"frobnicate": 1}
                )
                accepted = True
            except openai.BadRequestError:
                accepted = False
        assert accepted is passes, dropped


def test_the_responses_api_drops_its_reasoning_hint_too(gateway: Gateway) -> None:
    answer = gateway.client().responses.create(
        model="test-model", input="Hi", reasoning={"effort": "low"}, service_tier="auto"
    )
    assert answer.output_text
    assert "reasoning" not in gateway.backend.requests[-1].extra
