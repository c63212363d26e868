"""One JSON access-log line per request, with who/what/where/how long, and no secrets."""

from __future__ import annotations

import asyncio
import logging

import openai
import orjson
import pytest

from gateway.app import create_app
from gateway.tenancy.memory import MemoryStore
from tests.e2e.conftest import gateway_settings
from tests.gateway.doubles import PerTokenMeter, ScriptedBackend
from tests.live import LiveServer

pytestmark = pytest.mark.e2e


def test_access_log_line_has_the_facts_and_no_key_or_prompt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    key = asyncio.run(store.create_key("team-log")).secret
    settings = gateway_settings(server={"access_log": True})
    app = create_app(settings, store=store, backends=[ScriptedBackend()], meter=PerTokenMeter())
    caplog.set_level(logging.INFO, logger="tollgate.access")
    with LiveServer(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        client.completions.create(
            model="test-model", prompt="TOP-SECRET-PROMPT", max_tokens=4,
            extra_headers={"x-request-id": "client-7"},
        )
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "tollgate.access"]
    line = next(entry for entry in lines if entry["path"] == "/v1/completions")
    assert line["status"] == 200
    assert line["tenant"] == "team-log"
    assert line["model"] == "test-model"
    assert line["backend"] == "scripted"
    assert line["client_request_id"] == "client-7"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 4)
    assert line["duration_ms"] > 0
    text = caplog.text
    assert key not in text
    assert "TOP-SECRET-PROMPT" not in text
