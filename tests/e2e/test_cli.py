"""``tollgate`` from a terminal: admin commands against a live gateway, ``--json``, bench help."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

from gateway.cli import BENCHES, main
from tests.e2e.conftest import ADMIN_KEY, Gateway

pytestmark = pytest.mark.e2e


def run(capsys: pytest.CaptureFixture[str], gateway: Gateway, *argv: str) -> str:
    code = main([*argv, "--url", gateway.url, "--admin-key", ADMIN_KEY])
    assert code == 0
    return capsys.readouterr().out


def test_keys_create_takes_the_tenant_either_way_and_lists_times_as_dates(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "tenant: team-b" in run(capsys, gateway, "keys", "create", "--tenant", "team-b")
    issued = json.loads(run(capsys, gateway, "keys", "create", "team-b", "--json"))
    assert issued["tenant"] == "team-b" and issued["key"].startswith("tg-")

    listing = run(capsys, gateway, "keys", "list", "--tenant", "team-b")
    header, *rows = listing.splitlines()
    assert header.split() == ["id", "tenant", "name", "prefix", "created_at", "expires_at",
                              "allowed_models", "rpm", "tpm", "concurrency", "budget",
                              "revoked"]  # fmt: skip
    assert len(rows) == 2
    assert all(re.search(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b", row) for row in rows)
    keys = json.loads(run(capsys, gateway, "keys", "list", "--tenant", "team-b", "--json"))
    assert {k["tenant"] for k in keys["data"]} == {"team-b"}
    assert isinstance(keys["data"][0]["created_at"], float)

    revoked = json.loads(run(capsys, gateway, "keys", "revoke", issued["id"], "--json"))
    assert revoked == {"id": issued["id"], "object": "api_key", "revoked": True}


def test_a_key_scoped_to_one_model_sees_and_uses_only_that_model(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    issued = json.loads(run(capsys, gateway, "keys", "create", "team-d", "--name", "ci bot",
                            "--models", "test-alias", "--expires-in", "1h", "--json"))  # fmt: skip
    assert issued["name"] == "ci bot" and issued["allowed_models"] == ["test-alias"]
    assert 3500 < issued["expires_at"] - issued["created_at"] <= 3600
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=issued["key"], max_retries=0)
    assert client.completions.create(model="test-alias", prompt="x", max_tokens=2).choices
    with pytest.raises(openai.PermissionDeniedError):
        client.completions.create(model="test-model", prompt="x", max_tokens=2)
    listing = run(capsys, gateway, "keys", "list", "--tenant", "team-d")
    assert "ci bot" in listing and "test-alias" in listing
    with pytest.raises(SystemExit):
        main(["keys", "create", "team-d", "--expires-in", "soon", "--url", gateway.url,
              "--admin-key", ADMIN_KEY])  # fmt: skip
    assert "not a duration: 'soon'" in capsys.readouterr().err
    for body in ({"tenant": "team-d", "expires_at": 1.0},
                 {"tenant": "team-d", "expires_at": 4e9, "expires_in_s": 60}):  # fmt: skip
        refused = httpx.post(f"{gateway.url}/admin/keys", json=body,
                             headers={"Authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["type"] == "invalid_request_error"


def test_a_key_with_limits_of_its_own_is_refused_by_name_and_its_usage_is_grouped_by_key(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    created = run(capsys, gateway, "keys", "create", "--tenant", "team-e", "--name", "ci-bot",
                  "--rpm", "1", "--budget", "5")  # fmt: skip
    assert "limits: rpm 1, budget 5" in created
    secret = created.rsplit("secret (shown once): ", 1)[1].strip()
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)
    client.completions.create(model="test-model", prompt="x", max_tokens=2)
    with pytest.raises(openai.RateLimitError) as refused:
        client.completions.create(model="test-model", prompt="x", max_tokens=2)
    assert refused.value.body["message"] == "Rate limit reached for requests (key 'ci-bot')."
    assert 55 <= int(refused.value.response.headers["retry-after"]) <= 60

    keys = json.loads(run(capsys, gateway, "keys", "list", "--tenant", "team-e", "--json"))
    key_id = keys["data"][0]["id"]
    assert keys["data"][0]["limits"] == {"requests_per_minute": 1, "tokens_per_minute": None,
                                         "max_concurrent": None, "monthly_budget_usd": 5.0}
    header, row = run(capsys, gateway, "keys", "show", key_id).splitlines()
    cells = dict(zip(header.split(), row.split(), strict=True))
    assert (cells["name"], cells["rpm"], cells["tpm"], cells["budget"]) == ("ci-bot", "1", "-", "5")
    changed = json.loads(run(capsys, gateway, "keys", "set-limits", key_id, "--rpm", "100",
                             "--concurrency", "4", "--json"))  # fmt: skip
    assert changed["limits"]["requests_per_minute"] == 100
    assert changed["limits"]["max_concurrent"] == 4 and changed["limits"]["monthly_budget_usd"] == 5
    client.completions.create(model="test-model", prompt="x", max_tokens=2)  # 2 of 100 now

    table = run(capsys, gateway, "usage", "--tenant", "team-e", "--group-by", "key,model")
    header, *rows = table.splitlines()
    assert header.split()[:5] == ["key", "key_name", "model", "requests", "prompt_tokens"]
    assert [r.split()[:4] for r in rows] == [[key_id, "ci-bot", "test-model", "2"]]
    usage = json.loads(run(capsys, gateway, "usage", "--tenant", "team-e", "--group-by", "key",
                           "--json"))  # fmt: skip
    assert [(r["key"], r["key_name"], r["requests"]) for r in usage["data"]] == [
        (key_id, "ci-bot", 2)
    ]
    with pytest.raises(SystemExit, match=r"400: .*greater than or equal to 1.*tokens_per_minute"):
        main(["keys", "create", "team-e", "--tpm", "0", "--url", gateway.url,
              "--admin-key", ADMIN_KEY])  # fmt: skip


def test_keys_create_refuses_two_different_tenants(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit, match="name one tenant"):
        main(["keys", "create", "a", "--tenant", "b", "--url", gateway.url,
              "--admin-key", ADMIN_KEY])  # fmt: skip


def test_tenants_and_usage_answer_json(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    created = json.loads(
        run(capsys, gateway, "tenants", "create", "team-c", "--rpm", "10", "--json")
    )
    assert created["id"] == "team-c" and created["limits"]["requests_per_minute"] == 10
    table = run(capsys, gateway, "tenants", "show", "team-c")
    assert table.splitlines()[1].split()[:2] == ["team-c", "10"]
    tenants = json.loads(run(capsys, gateway, "tenants", "list", "--json"))
    assert "team-c" in {t["id"] for t in tenants["data"]}
    gateway.client().completions.create(model="test-model", prompt="x", max_tokens=2)
    usage = json.loads(run(capsys, gateway, "usage", "--tenant", "team-a", "--json"))
    assert usage["data"][0]["requests"] == 1 and usage["group_by"] == [
        "tenant", "backend", "model"
    ]  # fmt: skip


def test_bench_help_lists_every_bench_and_passes_help_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--help"])
    assert exited.value.code == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in BENCHES)
    with pytest.raises(SystemExit) as exited:
        main(["bench", "fleet", "--help"])
    assert exited.value.code == 0
    assert "usage: tollgate bench fleet" in capsys.readouterr().out


def test_unknown_arguments_of_other_commands_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "config/tollgate.yaml", "--frobnicate"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err
