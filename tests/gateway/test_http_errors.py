"""The HTTP shape of errors: what clients' retry logic reads off them."""

from __future__ import annotations

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.errors import QuotaExceeded, RateLimited
from gateway.http import error_response, install_error_handlers

pytestmark = pytest.mark.timeout(10)


def _client(exc: Exception, calls: list[httpx.Request]) -> openai.OpenAI:
    answer = error_response(exc)

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(answer.status_code, headers=dict(answer.headers),
                              content=answer.body)

    return openai.OpenAI(api_key="tg-test", base_url="http://gateway.test/v1", max_retries=2,
                         http_client=httpx.Client(transport=httpx.MockTransport(handle)))


def test_a_spent_budget_tells_the_sdk_not_to_retry() -> None:
    calls: list[httpx.Request] = []
    client = _client(QuotaExceeded("The budget is spent."), calls)
    with pytest.raises(openai.RateLimitError) as raised:
        client.completions.create(model="m", prompt="hi")
    assert len(calls) == 1
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert raised.value.code == "insufficient_quota"


def test_a_rate_limit_is_left_to_the_sdk_to_retry_after_the_wait_it_names() -> None:
    answer = error_response(RateLimited("Slow down.", retry_after=0.2))
    assert answer.headers["retry-after"] == "1"
    assert "x-should-retry" not in answer.headers


@pytest.mark.parametrize(("path", "hint"), [
    ("/v1/responses", "Unknown endpoint: POST /v1/responses."),
    ("/v1/v1/chat/completions", "The base URL already ends in /v1"),
    ("/v1", "/v1 is the base URL"),
    ("/chat/completions", "Did you mean /v1/chat/completions?"),
])
def test_an_unknown_endpoint_is_named_in_openais_envelope(path: str, hint: str) -> None:
    app = FastAPI()
    install_error_handlers(app)
    with TestClient(app) as client:
        answer = client.post(path, json={})
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert hint in error["message"] and error["code"] == "not_found"
