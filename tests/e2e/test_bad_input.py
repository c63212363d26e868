"""Bad input gets a precise OpenAI-shaped error, never a stack trace."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e


def _post(gateway: Gateway, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/completions",
        content=content,
        headers={"authorization": f"Bearer {gateway.key}", "content-type": "application/json",
                 **headers},
    )


def _error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, object] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert response.headers["x-request-id"]
    return error


def test_invalid_json(gateway: Gateway) -> None:
    response = _post(gateway, b'{"model": "test-model", "prompt": ')
    assert response.status_code == 400
    assert "could not parse the JSON body" in str(_error(response)["message"])


def test_body_must_be_an_object(gateway: Gateway) -> None:
    response = _post(gateway, b"[1, 2]")
    assert response.status_code == 400
    assert "JSON object" in str(_error(response)["message"])


def test_wrong_type_names_the_field(gateway: Gateway) -> None:
    response = _post(gateway, b'{"model": "test-model", "prompt": "x", "n": "two"}')
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == "n"
    assert "'n'" in str(error["message"])


def test_oversized_body_is_413(gateway: Gateway) -> None:
    huge = b'{"model": "test-model", "prompt": "' + b"x" * 70_000 + b'"}'
    response = _post(gateway, huge)
    assert response.status_code == 413
    assert "65536 bytes" in str(_error(response)["message"])


def test_absurd_max_tokens(gateway: Gateway) -> None:
    response = _post(gateway, b'{"model": "test-model", "prompt": "x", "max_tokens": 99999999}')
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == "max_tokens"
    assert "too large" in str(error["message"])


def test_unknown_route_and_method(gateway: Gateway) -> None:
    assert _error(httpx.get(f"{gateway.url}/v1/nothing"))["code"] == "not_found"
    response = httpx.get(f"{gateway.url}/v1/completions")
    assert response.status_code == 405
    assert _error(response)["code"] == "method_not_allowed"


def test_missing_and_malformed_keys(gateway: Gateway) -> None:
    response = httpx.post(f"{gateway.url}/v1/completions", json={})
    assert response.status_code == 401
    assert "didn't provide an API key" in str(_error(response)["message"])
    response = httpx.post(f"{gateway.url}/v1/completions", json={},
                          headers={"authorization": "Basic abc"})
    assert response.status_code == 401
    assert _error(response)["code"] == "invalid_api_key"
