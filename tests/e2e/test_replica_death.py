"""A replica killed with ``kill -9`` locks nobody out and loses (almost) none of its streams' usage.

Two ``tollgate serve`` processes on one Redis and one fake vLLM that sends 10 tokens and then
stalls. A tenant with ``max_concurrent: 2`` opens two streams on replica A, which is then
``kill -9``'d: within seconds replica B admits the tenant again (the leases lapsed and gave
back their reserved budget), and the 20 tokens A relayed before it died are on the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from tests.e2e.test_replicas_http import (
    REDIS_URL,
    UNSHARED,
    Replica,
    free_port,
    spawn,
    stop,
    wait_until,
)
from tests.fakes import Failure, FakeVLLM

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]
LEASE_TTL_S = 1.5  # store.lease_ttl_s: heartbeats (and checkpoints) every 0.5 s
DELIVERED = 10  # tokens the upstream sends before it stalls
USD_PER_MTOK = 1000.0  # a token costs $0.001 either way
MAX_TOKENS = 1000  # so admission reserves about $1 per request


def _config(tmp: Path, upstream: str, prefix: str, name: str) -> Path:
    config = {
        "server": {"host": "127.0.0.1", "access_log": False, "drain_timeout_s": 1},
        "store": {"key_prefix": prefix, "lease_ttl_s": LEASE_TTL_S,
                  "spool_dir": str(tmp / f"spool-{name}")},
        "models": [{"id": "m"}],
        "backends": [{"name": "up", "kind": "vllm", "url": upstream, "models": {"m": "m"},
                      "price": {"usd_per_mtok_input": USD_PER_MTOK,
                                "usd_per_mtok_output": USD_PER_MTOK}}],
        "telemetry": {"prometheus": False},
    }  # fmt: skip
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def _replicas(tmp: Path, upstream: str, prefix: str, admin_key: str) -> Iterator[list[Replica]]:
    env = {k: v for k, v in os.environ.items() if k not in UNSHARED}
    env |= {"TOLLGATE_REDIS_URL": REDIS_URL, "TOLLGATE_ADMIN_KEY": admin_key}
    replicas: list[Replica] = []
    try:
        for name in ("a", "b"):
            port, log = free_port(), tmp / f"{name}.log"
            args = ["gateway.cli", "serve", "--config", str(_config(tmp, upstream, prefix, name)),
                    "--port", str(port)]  # fmt: skip
            replicas.append(Replica(f"http://127.0.0.1:{port}", spawn(args, env, log), log))
        for replica in replicas:
            wait_until(replica.ready, 20.0, f"{replica.url}/readyz")
        yield replicas
    finally:
        stop([r.proc for r in replicas])
        asyncio.run(_drop(prefix))


async def _drop(prefix: str) -> None:
    from gateway.tenancy.redis_store import RedisStore

    store = RedisStore(REDIS_URL, prefix=prefix)
    await store.drop_everything()
    await store.aclose()


def _read_tokens(lines: Iterator[str], count: int) -> None:
    """Read an SSE answer up to its ``count``-th token (the upstream stalls after it).

    The caller keeps ``lines`` alive: httpx closes the response when its iterator goes away.
    """
    text = ""
    while f" w{count - 1}" not in text:
        line = next(lines)
        if line.startswith("data: {"):
            text += "".join(c["text"] for c in orjson.loads(line[6:])["choices"])


@pytest.mark.timeout(90)
def test_a_killed_replica_releases_its_tenant_within_seconds_and_its_usage_is_billed(
    tmp_path: Path,
) -> None:
    prefix, admin_key = "tgdeath" + secrets.token_hex(4), "tg-admin-" + secrets.token_urlsafe(16)
    admin = {"Authorization": f"Bearer {admin_key}"}
    tokens = [f" w{i}" for i in range(50)]
    with (
        FakeVLLM(tokens, failure=Failure("hang", after=DELIVERED)) as fake,
        _replicas(tmp_path, fake.url, prefix, admin_key) as (a, b),
    ):
        # Two reservations of ~$1 each exceed the budget, so a leaked one would lock it out.
        made = httpx.post(
            f"{b.url}/admin/tenants",
            headers=admin,
            json={"id": "crash", "max_concurrent": 2, "monthly_budget_usd": 1.6},
        )
        assert made.status_code == 200, made.text
        key = httpx.post(f"{b.url}/admin/keys", headers=admin, json={"tenant": "crash"})
        headers = {"Authorization": f"Bearer {key.json()['key']}"}
        body: dict[str, Any] = {"model": "m", "prompt": "hi", "max_tokens": MAX_TOKENS}

        def usage() -> dict[str, Any]:
            reply = httpx.get(f"{b.url}/admin/usage", headers=admin,
                              params={"tenant": "crash", "group_by": "tenant"})  # fmt: skip
            rows: list[dict[str, Any]] = reply.json()["data"]
            return rows[0] if rows else {"requests": 0, "completion_tokens": 0}

        with contextlib.ExitStack() as streams:
            client = streams.enter_context(httpx.Client(base_url=a.url, timeout=30.0))
            readers = []
            for _ in range(2):
                stream = streams.enter_context(
                    client.stream("POST", "/v1/completions", headers=headers,
                                  json={**body, "stream": True})
                )  # fmt: skip
                assert stream.status_code == 200
                readers.append(stream.iter_lines())
                _read_tokens(readers[-1], DELIVERED)
            delivered = time.monotonic()
            full = httpx.post(f"{b.url}/v1/completions", headers=headers, json=body)
            # The two reservations hold the budget (checked before concurrency).
            assert full.status_code == 429
            assert full.json()["error"]["code"] == "insufficient_quota"
            # Long streams are checkpointed within about one heartbeat of what they relayed.
            wait_until(lambda: usage()["completion_tokens"] == 2 * DELIVERED, 3 * LEASE_TTL_S,
                       "the relayed tokens on the ledger")  # fmt: skip
            assert time.monotonic() - delivered <= 2 * LEASE_TTL_S  # a heartbeat or two
            a.proc.kill()  # kill -9: no drain, no settlement, no goodbye
            a.proc.wait()
            killed = time.monotonic()

        fake.failure = None  # from now on the upstream answers in full

        def admitted() -> bool:
            reply = httpx.post(f"{b.url}/v1/completions", headers=headers,
                               json={**body, "max_tokens": 5})  # fmt: skip
            assert reply.status_code in (200, 429), reply.text
            return reply.status_code == 200

        wait_until(admitted, 2 * LEASE_TTL_S + 5.0, "the tenant admitted on replica b")
        assert time.monotonic() - killed <= LEASE_TTL_S + 2.0
        # The dead replica's streams stay billed (once), beside the new request's 5 tokens.
        wait_until(lambda: usage()["requests"] == 3, 5.0, "the new request on the ledger")
        row = usage()
        assert row["completion_tokens"] == 2 * DELIVERED + 5
        assert row["cost_usd"] == pytest.approx(
            (row["prompt_tokens"] + row["completion_tokens"]) * USD_PER_MTOK / 1e6
        )
