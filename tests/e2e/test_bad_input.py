"""Bad input gets a precise OpenAI-shaped error, never a stack trace."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.tenancy.models import Limits
from gateway.tenancy.redis_store import RedisStore
from tests.e2e.conftest import ADMIN_KEY, Gateway, gateway_settings
from tests.gateway.doubles import ScriptedBackend

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


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "test-model", "prompt": "x", "seed": 100000000000000000000}', "seed"),
        (b'{"model": "test-model", "prompt": [1, 100000000000000000000]}', "prompt"),
        (b'{"model": "test-model", "prompt": "x", "top_k": 100000000000000000000}', "top_k"),
        (b'{"model": "test-model", "prompt": "x", "temperature": 1e400}', "temperature"),
        (b'{"model": "test-model", "prompt": "x", "logit_bias": {"1": NaN}}', "logit_bias"),
    ],
)
def test_numbers_no_backend_can_hold_are_refused_naming_the_field(
    gateway: Gateway, body: bytes, param: str
) -> None:
    response = _post(gateway, body)
    assert response.status_code == 400
    assert str(_error(response)["param"]).startswith(param)


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_concurrent", b"18446744073709551616"), ("monthly_budget_usd", b"1e300"),
     ("requests_per_minute", b"Infinity")],
)
def test_tenant_limits_out_of_range_are_refused_and_nothing_is_created(
    gateway: Gateway, field: str, value: bytes
) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    body = b'{"id": "team-huge", "' + field.encode() + b'": ' + value + b"}"
    response = httpx.post(f"{gateway.url}/admin/tenants", content=body, headers=admin)
    assert response.status_code == 400
    assert _error(response)["param"] == field
    assert httpx.get(f"{gateway.url}/admin/tenants/team-huge", headers=admin).status_code == 404


@pytest.mark.parametrize("query", ["to=inf", "from=-1e400", "to=nan"])
def test_usage_times_that_are_not_times_are_refused(gateway: Gateway, query: str) -> None:
    response = httpx.get(f"{gateway.url}/v1/usage?{query}",
                         headers={"authorization": f"Bearer {gateway.key}"})
    assert response.status_code == 400
    assert _error(response)["param"] == query.split("=")[0]


def test_admin_refuses_a_stranger_without_reading_the_body(gateway: Gateway) -> None:
    reads = 0

    async def receive() -> dict[str, object]:  # a 100 MB upload, if anyone read it
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 65536, "more_body": reads < 1600}

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/admin/tenants", "raw_path": b"",
             "query_string": b"", "headers": [(b"content-type", b"application/json")],
             "app": gateway.app, "http_version": "1.1", "scheme": "http",
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(gateway.app(scope, receive, send))
    assert sent[0]["status"] == 401
    assert reads == 0
    malformed = httpx.post(f"{gateway.url}/admin/tenants", content=b'{"id": ',
                           headers={"authorization": "Bearer not-the-admin-key"})
    assert malformed.status_code == 401


def test_every_route_has_the_body_limit(gateway: Gateway) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    huge = b'{"id": "team-big", "allowed_models": ["' + b"m" * 70_000 + b'"]}'
    response = httpx.post(f"{gateway.url}/admin/tenants", content=huge, headers=admin)
    assert response.status_code == 413
    assert _error(response)["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no content-length: cut off as it arrives
        yield b'{"id": "team-big", "allowed_models": ["'
        for _ in range(20):
            yield b"m" * 8192
        yield b'"]}'

    response = httpx.post(f"{gateway.url}/admin/tenants", content=chunked(), headers=admin)
    assert response.status_code == 413


def test_readyz_says_not_ready_while_the_store_is_unreachable(
    gateway: Gateway, tmp_path: Path
) -> None:
    ok = httpx.get(f"{gateway.url}/readyz")
    assert ok.status_code == 200 and ok.json()["store"] == "ok"
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", spool_dir=str(tmp_path))
    app = create_app(gateway_settings(), store=store, backends=[ScriptedBackend("scripted")])

    async def readyz() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            return await http.get("/readyz")

    response = asyncio.run(readyz())
    assert response.status_code == 503 and response.json()["store"] == "unreachable"


def test_one_request_cannot_fan_out_past_the_per_request_limit(gateway: Gateway) -> None:
    prompts = b"[" + b",".join(b'"p"' for _ in range(10)) + b"]"
    body = b'{"model": "test-model", "prompt": ' + prompts + b', "n": 20}'
    before = len(gateway.backend.requests)
    response = _post(gateway, body)
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == "n" and "200 generations" in str(error["message"])
    assert len(gateway.backend.requests) == before  # nothing reached the upstream


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/json; charset=latin-1"],
)
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_generation_routes_refuse_a_body_that_is_not_json(
    gateway: Gateway, path: str, content_type: str
) -> None:
    body = b'{"model": "test-model", "prompt": "x", "messages": [{"role": "user", "content": "x"}]}'
    before = len(gateway.backend.requests)
    response = httpx.post(f"{gateway.url}{path}", content=body,
                          headers={"authorization": f"Bearer {gateway.key}",
                                   "content-type": content_type})
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "unsupported_content_type"
    assert content_type in str(error["message"])
    assert len(gateway.backend.requests) == before


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=UTF-8"])
def test_json_with_or_without_a_charset_is_served(gateway: Gateway, content_type: str) -> None:
    response = _post(gateway, b'{"model": "test-model", "prompt": "x", "max_tokens": 2}',
                     **{"content-type": content_type})
    assert response.status_code == 200, response.text


def test_a_stranger_with_a_huge_admin_body_is_answered_before_it_is_sent(
    gateway: Gateway,
) -> None:
    declared = 104 * 1024 * 1024
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /admin/tenants HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
            + f"content-length: {declared}\r\n\r\n".encode()
            + b'{"id": "' + b"x" * 65536
        )
        answer = _read_answer(sock)  # times out if the server waits for the other 104 MB
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b'"invalid_api_key"' in answer


def _read_answer(sock: socket.socket) -> bytes:
    """One HTTP answer with a content-length body, as it arrives."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer) < _answer_size(answer):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def _answer_size(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(answer)


def _admin(gateway: Gateway) -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("POST", "/admin/tenants"),
     ("PATCH", "/admin/tenants/team-a"), ("POST", "/admin/keys"), ("GET", "/v1/models"),
     ("GET", "/admin/usage")],
)
def test_every_route_kind_answers_an_oversized_body_with_413(
    gateway: Gateway, method: str, path: str
) -> None:
    key = ADMIN_KEY if path.startswith("/admin") else gateway.key
    body = b'{"model": "test-model", "prompt": "' + b"x" * 70_000 + b'"}'
    response = httpx.request(method, f"{gateway.url}{path}", content=body,
                             headers={"authorization": f"Bearer {key}",
                                      "content-type": "application/json"})
    assert response.status_code == 413
    assert _error(response)["code"] == "request_too_large"


def test_a_budget_no_store_can_hold_is_refused_and_the_tenant_keeps_working(
    gateway: Gateway,
) -> None:
    key = gateway.key_for("team-budget", Limits(monthly_budget_usd=5.0))
    response = httpx.patch(f"{gateway.url}/admin/tenants/team-budget",
                           content=b'{"monthly_budget_usd": 1e300}', headers=_admin(gateway))
    assert response.status_code == 400
    assert _error(response)["param"] == "monthly_budget_usd"
    shown = httpx.get(f"{gateway.url}/admin/tenants/team-budget", headers=_admin(gateway))
    assert shown.json()["limits"]["monthly_budget_usd"] == 5.0
    served = httpx.post(f"{gateway.url}/v1/completions",
                        json={"model": "test-model", "prompt": "x", "max_tokens": 2},
                        headers={"authorization": f"Bearer {key}"})
    assert served.status_code == 200
