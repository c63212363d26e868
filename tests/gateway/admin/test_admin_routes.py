"""The admin and usage endpoints over HTTP (ASGI), on an in-process store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway.admin.routes import admin_router, usage_router
from gateway.errors import GatewayError, error_body, http_answer
from gateway.telemetry import Telemetry
from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.models import UsageRecord

pytestmark = pytest.mark.anyio
ADMIN = {"Authorization": "Bearer tg-admin-test"}


def build_app(store: MemoryStore) -> FastAPI:
    app = FastAPI()
    # The routes only reach these parts of the app state (telemetry counts refused keys).
    app.state.tollgate = SimpleNamespace(
        store=store, admin_key="tg-admin-test", meter=None, telemetry=Telemetry()
    )

    @app.exception_handler(GatewayError)
    async def answer(_: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=http_answer(exc).status)

    app.include_router(admin_router)
    app.include_router(usage_router)
    return app


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, MemoryStore]]:
    store = MemoryStore()
    transport = httpx.ASGITransport(app=build_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        yield http, store


async def test_admin_endpoints_need_the_admin_key(
    client: tuple[httpx.AsyncClient, MemoryStore],
) -> None:
    http, store = client
    issued = await store.create_key("acme")
    for headers in [{}, {"Authorization": f"Bearer {issued.secret}"}]:
        answer = await http.get("/admin/tenants", headers=headers)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_api_key"


async def test_tenant_lifecycle(client: tuple[httpx.AsyncClient, MemoryStore]) -> None:
    http, _ = client
    made = await http.post(
        "/admin/tenants", headers=ADMIN, json={"id": "acme", "requests_per_minute": 50}
    )
    assert made.status_code == 200 and made.json()["limits"]["requests_per_minute"] == 50
    again = await http.post("/admin/tenants", headers=ADMIN, json={"id": "acme"})
    assert again.status_code == 400
    patched = await http.patch(
        "/admin/tenants/acme", headers=ADMIN, json={"tokens_per_minute": 1000, "policy": "latency"}
    )
    limits = patched.json()["limits"]
    assert (limits["requests_per_minute"], limits["tokens_per_minute"]) == (50, 1000)
    listed = await http.get("/admin/tenants", headers=ADMIN)
    assert [t["id"] for t in listed.json()["data"]] == ["acme"]
    assert (await http.delete("/admin/tenants/acme", headers=ADMIN)).status_code == 200
    missing = await http.get("/admin/tenants/acme", headers=ADMIN)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "tenant"
    bad = await http.post("/admin/tenants", headers=ADMIN, json={"id": "Bad Id"})
    assert bad.status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "param"),
    [
        ("GET", "/admin/tenants/ghost", "tenant"),
        ("PATCH", "/admin/tenants/ghost", "tenant"),
        ("DELETE", "/admin/tenants/ghost", "tenant"),
        ("DELETE", "/admin/keys/key_0123456789abcdef", "key_id"),
    ],
)
async def test_missing_tenants_and_keys_are_404(
    client: tuple[httpx.AsyncClient, MemoryStore], method: str, path: str, param: str
) -> None:
    http, _ = client
    body = {"requests_per_minute": 5} if method == "PATCH" else None
    answer = await http.request(method, path, headers=ADMIN, json=body)
    assert answer.status_code == 404
    assert answer.json()["error"] == {
        "message": answer.json()["error"]["message"], "type": "invalid_request_error",
        "param": param, "code": "not_found",
    }  # fmt: skip


async def test_keys_and_own_usage(client: tuple[httpx.AsyncClient, MemoryStore]) -> None:
    http, store = client
    issued = (await http.post("/admin/keys", headers=ADMIN, json={"tenant": "newco"})).json()
    assert set(issued) >= {"id", "key", "tenant"} and issued["key"].startswith("tg-")
    listed = (await http.get("/admin/keys", headers=ADMIN, params={"tenant": "newco"})).json()
    assert [k["id"] for k in listed["data"]] == [issued["id"]]
    assert "key" not in listed["data"][0]

    caller = await store.authenticate(issued["key"])
    admission = await store.admit(caller, tokens=10, cost_usd=0.0)
    record = UsageRecord(
        request_id=admission.request_id, tenant="newco", key_id=caller.key_id, model="gemma",
        backend="tpu", prompt_tokens=4, completion_tokens=6, cost_usd=0.002, status=200,
        started_at=time.time(), duration_s=0.1,
    )  # fmt: skip
    await store.settle(admission, record)
    own = await http.get("/v1/usage", headers={"Authorization": f"Bearer {issued['key']}"})
    assert own.status_code == 200
    assert own.json()["data"] == [
        {
            "backend": "tpu", "model": "gemma", "requests": 1, "prompt_tokens": 4,
            "completion_tokens": 6, "total_tokens": 10, "cost_usd": 0.002,
            "tokens_per_dollar": pytest.approx(3000.0),
        }
    ]  # fmt: skip
    grouped = await http.get(
        "/admin/usage", headers=ADMIN, params={"group_by": "tenant,day", "from": "2020-01-01"}
    )
    assert [r["tenant"] for r in grouped.json()["data"]] == ["newco"]
    bad = await http.get("/admin/usage", headers=ADMIN, params={"group_by": "colour"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"

    revoked = await http.delete(f"/admin/keys/{issued['id']}", headers=ADMIN)
    assert revoked.status_code == 200
    again = await http.delete(f"/admin/keys/{issued['id']}", headers=ADMIN)
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"
    refused = await http.get("/v1/usage", headers={"Authorization": f"Bearer {issued['key']}"})
    assert refused.status_code == 401
