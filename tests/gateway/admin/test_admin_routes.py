"""The admin and usage endpoints over HTTP (ASGI), on an in-process store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from gateway.admin.routes import admin_router, usage_router
from gateway.http import install_error_handlers
from gateway.telemetry import Telemetry
from gateway.tenancy.ledger import UNATTRIBUTED
from gateway.tenancy.memory import MemoryStore
from gateway.tenancy.models import Admission, Principal, UsageRecord

pytestmark = pytest.mark.anyio
ADMIN = {"Authorization": "Bearer tg-admin-test"}


def build_app(store: MemoryStore) -> FastAPI:
    app = FastAPI()
    # The routes only reach these parts of the app state (telemetry counts refused keys).
    app.state.tollgate = SimpleNamespace(
        store=store, admin_key="tg-admin-test", meter=None, telemetry=Telemetry()
    )

    install_error_handlers(app)  # the app's own: OpenAI's envelope, 400 for invalid bodies
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
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "id"


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


LIMITS = {"requests_per_minute": 60, "tokens_per_minute": None, "max_concurrent": None,
          "monthly_budget_usd": 5.0}  # fmt: skip


async def test_a_key_is_created_shown_and_changed_with_limits_of_its_own(
    client: tuple[httpx.AsyncClient, MemoryStore],
) -> None:
    http, store = client
    body = {"tenant": "acme", "name": "ci-bot", "requests_per_minute": 60,
            "monthly_budget_usd": 5}  # fmt: skip
    issued = (await http.post("/admin/keys", headers=ADMIN, json=body)).json()
    assert issued["limits"] == LIMITS and issued["name"] == "ci-bot"
    caller = await store.authenticate(issued["key"])
    assert caller.scope.limits.requests_per_minute == 60  # enforced from the first request
    listed = (await http.get("/admin/keys", headers=ADMIN)).json()["data"]
    assert [k["limits"] for k in listed] == [LIMITS]
    shown = await http.get(f"/admin/keys/{issued['id']}", headers=ADMIN)
    assert shown.json() == listed[0]

    patched = await http.patch(f"/admin/keys/{issued['id']}", headers=ADMIN,
                               json={"max_concurrent": 2, "monthly_budget_usd": None})
    assert patched.status_code == 200  # only what the body names changes; null is unlimited
    assert patched.json()["limits"] == {**LIMITS, "max_concurrent": 2, "monthly_budget_usd": None}
    caller = await store.authenticate(issued["key"])
    assert (caller.scope.limits.max_concurrent, caller.scope.limits.monthly_budget_usd) == (2, None)

    await http.delete(f"/admin/keys/{issued['id']}", headers=ADMIN)
    for key_id in (issued["id"], "key_0123456789abcdef"):
        gone = await http.patch(f"/admin/keys/{key_id}", headers=ADMIN, json={"max_concurrent": 1})
        assert gone.status_code == 404 and gone.json()["error"]["param"] == "key_id"
    missing = await http.get("/admin/keys/key_0123456789abcdef", headers=ADMIN)
    assert missing.status_code == 404
    assert (await http.get(f"/admin/keys/{issued['id']}", headers=ADMIN)).json()["revoked"]


@pytest.mark.parametrize(
    ("method", "body", "param"),
    [
        ("POST", {"requests_per_minute": 0}, "requests_per_minute"),
        ("POST", {"tokens_per_minute": "many"}, "tokens_per_minute"),
        ("POST", {"max_concurrent": 10**7}, "max_concurrent"),
        ("POST", {"monthly_budget_usd": -1}, "monthly_budget_usd"),
        ("PATCH", {"monthly_budget_usd": "NaN"}, "monthly_budget_usd"),
        ("PATCH", {"max_concurrent": 0}, "max_concurrent"),
        ("PATCH", {"name": "renamed"}, "name"),  # only a key's limits change
    ],
)
async def test_invalid_key_limits_are_400_naming_the_param(
    client: tuple[httpx.AsyncClient, MemoryStore], method: str, body: dict[str, object],
    param: str,
) -> None:
    http, store = client
    key_id = (await store.create_key("acme")).record.id
    path, full = ("/admin/keys", {"tenant": "acme", **body}) if method == "POST" else (
        f"/admin/keys/{key_id}", body)  # fmt: skip
    answer = await http.request(method, path, headers=ADMIN, json=full)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert [k.scope.limits.unlimited for k in await store.list_keys()] == [True]


async def _spend(store: MemoryStore, caller: Principal, cost: float) -> Admission:
    admission = await store.admit(caller, tokens=10, cost_usd=0.0)
    await store.settle(admission, UsageRecord(
        request_id=admission.request_id, tenant=caller.tenant.id, key_id=caller.key_id,
        model="gemma", backend="tpu", prompt_tokens=4, completion_tokens=6, cost_usd=cost,
        status=200, started_at=time.time(), duration_s=0.1,
    ))  # fmt: skip
    return admission


async def test_usage_grouped_by_key_names_each_key(
    client: tuple[httpx.AsyncClient, MemoryStore],
) -> None:
    http, store = client
    named = (await http.post("/admin/keys", headers=ADMIN,
                             json={"tenant": "acme", "name": "ci-bot"})).json()  # fmt: skip
    plain = (await http.post("/admin/keys", headers=ADMIN, json={"tenant": "acme"})).json()
    other = (await http.post("/admin/keys", headers=ADMIN, json={"tenant": "beta"})).json()
    for issued, cost in [(named, 0.002), (named, 0.001), (plain, 0.004), (other, 0.01)]:
        await _spend(store, await store.authenticate(issued["key"]), cost)

    answer = await http.get("/admin/usage", headers=ADMIN, params={"group_by": "tenant,key"})
    assert answer.status_code == 200 and answer.json()["group_by"] == ["tenant", "key"]
    rows = [(r["tenant"], r["key"], r["key_name"], r["requests"], r["cost_usd"])
            for r in answer.json()["data"]]  # fmt: skip
    assert sorted(rows) == sorted([
        ("acme", named["id"], "ci-bot", 2, 0.003), ("acme", plain["id"], None, 1, 0.004),
        ("beta", other["id"], None, 1, 0.01),
    ])  # fmt: skip
    assert list(answer.json()["data"][0])[:3] == ["tenant", "key", "key_name"]

    own = await http.get("/v1/usage", params={"group_by": "key"},
                         headers={"Authorization": f"Bearer {plain['key']}"})  # fmt: skip
    assert {r["key"]: r["key_name"] for r in own.json()["data"]} == {
        named["id"]: "ci-bot", plain["id"]: None
    }  # fmt: skip
    # Without "key" in the grouping, rows are as they were: no key columns.
    untouched = await http.get("/admin/usage", headers=ADMIN, params={"group_by": "tenant"})
    assert set(untouched.json()["data"][0]) == {
        "tenant", "requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd",
        "tokens_per_dollar",
    }  # fmt: skip
    assert UNATTRIBUTED not in {r.get("key") for r in answer.json()["data"]}
