"""Several ``tollgate serve`` processes on one Redis, no balancer: limits hold fleet-wide over HTTP.

Each replica is a real subprocess with its own port, the same ``TOLLGATE_REDIS_URL``, admin
key and key prefix, and one backend: ``bench.upstream`` (canned vLLM answers: 8 prompt and
16 completion tokens). Tenants and keys are made through one replica's admin API; every
replica is then hammered at once and the limits are checked from the answers alone (200, or
429 with its code and ``retry-after``) and the client's clock.

A request's admission happened somewhere in [sent, answered], so the checks are sound for any
latency: a limit is broken only if more than L accepted requests lie *wholly* inside one
trailing window, and a refusal is wrong only if fewer than L accepted ones even *touch* it.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.tokenizers import SPECIAL_TOKENS

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 3
WINDOW_S = 2.0  # store.limit_window_s: the "minute" of RPM and TPM, short so the test is quick
BUCKETS = 60  # token buckets per window (gateway.tenancy.limits.BUCKETS)
MODEL = "fake-model"
# 32 bytes: the gateway estimates 4 bytes a token, so it reserves 8 + 16 tokens, exactly what
# the upstream then reports: reservation and actual tokens agree, which keeps the TPM checks tight.
PROMPT = "The quick brown fox jumps over t"
MAX_TOKENS = 16
USD_PER_MTOK = 1000.0  # both directions: a request costs 24 tokens * $0.001 = $0.024
START_DEADLINE_S = 20.0
UNSHARED = ("TOLLGATE_REDIS_URL", "TOLLGATE_CONFIG")  # not taken from the calling shell


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], deadline_s: float, what: str) -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Fleet:
    """Running replicas (base URLs) and the admin key they share."""

    urls: list[str]
    admin_key: str
    prefix: str

    @property
    def admin(self) -> dict[str, str]:
        """Headers of an admin call."""
        return {"Authorization": f"Bearer {self.admin_key}"}

    def tenant_key(self, tenant: str, **limits: Any) -> str:
        """Create ``tenant`` via replica 0's admin API and issue it a key there."""
        made = httpx.post(
            f"{self.urls[0]}/admin/tenants", headers=self.admin, json={"id": tenant, **limits}
        )
        assert made.status_code == 200, made.text
        issued = httpx.post(
            f"{self.urls[0]}/admin/keys", headers=self.admin, json={"tenant": tenant}
        )
        assert issued.status_code == 200, issued.text
        secret: str = issued.json()["key"]
        return secret


def gateway_config(tmp: Path, upstream: str, prefix: str, index: int) -> Path:
    """One replica's YAML: Redis comes from the environment, as in production."""
    config = {
        "server": {"host": "127.0.0.1", "access_log": False, "drain_timeout_s": 1},
        "store": {
            "key_prefix": prefix,
            "limit_window_s": WINDOW_S,
            "spool_dir": str(tmp / f"spool-{index}"),
        },
        "models": [{"id": MODEL}],
        "backends": [
            {
                "name": "fake",
                "kind": "vllm",
                "url": upstream,
                "models": {MODEL: "bench-upstream"},
                "price": {"usd_per_mtok_input": USD_PER_MTOK, "usd_per_mtok_output": USD_PER_MTOK},
            }
        ],
        "telemetry": {"prometheus": False},
    }
    path = tmp / f"replica-{index}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def spawn(args: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a Python module as a subprocess, its output going to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process we started, then wait (SIGKILL what does not exit)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass(frozen=True)
class Replica:
    """One ``tollgate serve`` subprocess."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def ready(self) -> bool:
        """Whether ``/readyz`` says ready; fails at once if the process died."""
        if self.proc.poll() is not None:
            output = self.log.read_text()
            raise AssertionError(f"{self.url} exited with {self.proc.returncode}:\n{output}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("replicas")
    prefix = "tge2e" + secrets.token_hex(4)
    admin_key = "tg-admin-" + secrets.token_urlsafe(16)
    env = {k: v for k, v in os.environ.items() if k not in UNSHARED}
    env |= {"TOLLGATE_REDIS_URL": REDIS_URL, "TOLLGATE_ADMIN_KEY": admin_key}
    up_port = free_port()
    upstream = spawn(["bench.upstream", str(up_port)], env, tmp / "upstream.log")
    replicas: list[Replica] = []
    try:
        for i in range(REPLICAS):
            port, log = free_port(), tmp / f"replica-{i}.log"
            config = gateway_config(tmp, f"http://127.0.0.1:{up_port}", prefix, i)
            args = ["gateway.cli", "serve", "--config", str(config), "--port", str(port)]
            replicas.append(Replica(f"http://127.0.0.1:{port}", spawn(args, env, log), log))
        for replica in replicas:
            wait_until(replica.ready, START_DEADLINE_S, f"{replica.url}/readyz")
        yield Fleet([r.url for r in replicas], admin_key, prefix)
    finally:
        stop([r.proc for r in replicas])
        stop([upstream])
        asyncio.run(_drop(prefix))


async def _drop(prefix: str) -> None:
    from gateway.tenancy.redis_store import RedisStore

    store = RedisStore(REDIS_URL, prefix=prefix)
    await store.drop_everything()
    await store.aclose()


# -- hammering ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One request as the client saw it: when it was sent and answered, and what came back."""

    tenant: str
    sent: float
    done: float
    status: int
    code: str | None = None
    message: str = ""
    retry_after: str | None = None
    tokens: int = 0
    cost_usd: float = 0.0


async def hammer(
    urls: Sequence[str],
    secrets_by_tenant: dict[str, str],
    *,
    seconds: float,
    clients: int,
    stop_on_quota: bool = False,
    most: int = 5000,
) -> list[Answer]:
    """``clients`` callers per replica and tenant, for ``seconds`` or ``most`` requests a tenant."""
    answers: list[Answer] = []
    deadline = time.monotonic() + seconds
    budget = dict.fromkeys(secrets_by_tenant, most)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS}

    async def caller(http: httpx.AsyncClient, tenant: str, secret: str) -> None:
        headers = {"Authorization": f"Bearer {secret}"}
        while time.monotonic() < deadline and budget[tenant] > 0:
            budget[tenant] -= 1
            sent = time.time()
            reply = await http.post("/v1/completions", json=body, headers=headers)
            answer = read(tenant, sent, time.time(), reply)
            answers.append(answer)
            if answer.code == "insufficient_quota" and stop_on_quota:
                return
            if answer.status == 429:
                await asyncio.sleep(0.01)  # a client backing off briefly, as SDKs do

    limits = httpx.Limits(max_connections=2 * clients * len(secrets_by_tenant))
    https = [httpx.AsyncClient(base_url=u, limits=limits, timeout=10.0) for u in urls]
    try:
        await asyncio.gather(
            *(
                caller(http, tenant, secret)
                for http in https
                for tenant, secret in secrets_by_tenant.items()
                for _ in range(clients)
            )
        )
    finally:
        for http in https:
            await http.aclose()
    return answers


def read(tenant: str, sent: float, done: float, reply: httpx.Response) -> Answer:
    """What a test needs from one answer."""
    if reply.status_code == 200:
        usage = reply.json()["usage"]
        cost = float(reply.headers["x-tollgate-cost-usd"])
        return Answer(tenant, sent, done, 200, tokens=usage["total_tokens"], cost_usd=cost)
    error = reply.json()["error"]
    return Answer(
        tenant, sent, done, reply.status_code, error["code"], error["message"],
        reply.headers.get("retry-after"),
    )  # fmt: skip


def surely_inside(accepted: Sequence[Answer], end: float, span: float) -> list[Answer]:
    """Accepted requests admitted in (end - span, end] whatever their latency."""
    return [a for a in accepted if a.sent > end - span and a.done <= end]


def maybe_inside(accepted: Sequence[Answer], refused: Answer, span: float) -> list[Answer]:
    """Accepted requests that may have been in the window trailing ``refused``'s admission."""
    return [a for a in accepted if a.done > refused.sent - span and a.sent <= refused.done]


def in_flight(accepted: Sequence[Answer], refused: Answer) -> list[Answer]:
    """Accepted requests that may still have been running when ``refused`` was decided."""
    return [a for a in accepted if a.sent <= refused.done and a.done >= refused.sent]


def tokens(answers: Sequence[Answer]) -> int:
    """Tokens the answers used (as reported in their usage)."""
    return sum(a.tokens for a in answers)


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_request_and_token_limits_hold_across_replicas(fleet: Fleet) -> None:
    rpm, tpm = 50, 600  # per WINDOW_S; each request is 24 tokens, reserved and actual
    keys = {
        "rpm": fleet.tenant_key("rpm", requests_per_minute=rpm, tokens_per_minute=100_000),
        "tpm": fleet.tenant_key("tpm", requests_per_minute=100_000, tokens_per_minute=tpm),
    }
    answers = asyncio.run(hammer(fleet.urls, keys, seconds=2.5 * WINDOW_S, clients=3))
    assert {a.status for a in answers} == {200, 429}, {a.message for a in answers}
    limited = [a for a in answers if a.status == 429]
    assert all(a.code == "rate_limit_exceeded" for a in limited)
    assert all(a.retry_after and 1 <= int(a.retry_after) <= math.ceil(WINDOW_S) for a in limited)

    accepted = [a for a in answers if a.tenant == "rpm" and a.status == 200]
    refused = [a for a in answers if a.tenant == "rpm" and "requests" in a.message]
    assert len(accepted) >= 2 * rpm and refused
    # Never more than the limit accepted in any trailing window, across all replicas...
    assert max(len(surely_inside(accepted, a.done, WINDOW_S)) for a in accepted) <= rpm
    # ...and no refusal while fewer than the limit had been accepted in its window.
    assert min(len(maybe_inside(accepted, r, WINDOW_S)) for r in refused) >= rpm

    accepted = [a for a in answers if a.tenant == "tpm" and a.status == 200]
    refused = [a for a in answers if a.tenant == "tpm" and "tokens" in a.message]
    each = accepted[0].tokens
    assert all(a.tokens == each for a in accepted) and refused
    assert len(accepted) >= 2 * (tpm // each)
    # Buckets are WINDOW_S / 60 long, so the limit covers at least 59/60 of the window.
    span = WINDOW_S * (BUCKETS - 1) / BUCKETS
    assert max(tokens(surely_inside(accepted, a.done, span)) for a in accepted) <= tpm
    # A token refusal means the window already held more than tpm less one reservation: the
    # prompt is reserved at its upper bound (a token a byte, plus BOS/EOS), the answer at
    # max_tokens, and settled at what was used. Requests in flight at the refusal still held
    # their whole reservation, so each of those may count ``reserved`` rather than ``each``.
    reserved = len(PROMPT.encode()) + SPECIAL_TOKENS + MAX_TOKENS
    for r in refused:
        held = tokens(maybe_inside(accepted, r, WINDOW_S)) + (reserved - each) * len(
            in_flight(accepted, r)
        )
        assert held > tpm - reserved, (r, held)


@pytest.mark.timeout(60)
def test_budget_stops_the_tenant_on_every_replica(fleet: Fleet) -> None:
    budget, clients = 0.5, 2
    key = fleet.tenant_key("budget", monthly_budget_usd=budget)
    answers = asyncio.run(
        hammer(fleet.urls, {"budget": key}, seconds=10.0, clients=clients, stop_on_quota=True)
    )
    ok = [a for a in answers if a.status == 200]
    quota = [a for a in answers if a.status == 429]
    assert len(ok) + len(quota) == len(answers)
    # Every caller was stopped, with insufficient_quota and no retry-after: waiting won't help.
    assert len(quota) == clients * len(fleet.urls)
    assert all(a.code == "insufficient_quota" and a.retry_after is None for a in quota)
    worst = (len(PROMPT) / 4 + MAX_TOKENS) * USD_PER_MTOK / 1e6  # what admission reserves
    actual = min(a.cost_usd for a in ok)
    billed = sum(a.cost_usd for a in ok)

    def usage() -> dict[str, Any]:
        reply = httpx.get(
            f"{fleet.urls[-1]}/admin/usage",
            headers=fleet.admin,
            params={"tenant": "budget", "group_by": "tenant"},
        )
        rows: list[dict[str, Any]] = reply.json()["data"]
        return rows[0] if rows else {"requests": 0}

    # Settlement may finish just after the answer: wait for every request to be on the ledger.
    wait_until(lambda: usage()["requests"] == len(ok), 5.0, "every request on the ledger")
    spent = usage()["cost_usd"]
    assert spent == pytest.approx(billed, abs=1e-9)
    # Stopped at the budget: over by at most one in-flight request's worst case, and under it
    # only by what in-flight reservations held above their actual cost when the last was refused.
    in_flight = clients * len(fleet.urls)
    assert budget - (worst - actual) * in_flight - 1e-9 <= spent <= budget + worst + 1e-9


@pytest.mark.timeout(30)
def test_revoking_a_key_on_one_replica_takes_effect_on_the_others(fleet: Fleet) -> None:
    secret = fleet.tenant_key("revoked")
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS}
    for url in fleet.urls:  # every replica has now cached the key as valid
        assert httpx.post(f"{url}/v1/completions", json=body, headers=headers).status_code == 200
    key_id = httpx.get(
        f"{fleet.urls[0]}/admin/keys", headers=fleet.admin, params={"tenant": "revoked"}
    ).json()["data"][0]["id"]
    revoked_at = time.monotonic()
    gone = httpx.delete(f"{fleet.urls[0]}/admin/keys/{key_id}", headers=fleet.admin)
    assert gone.status_code == 200

    def refused(url: str) -> bool:
        reply = httpx.post(f"{url}/v1/completions", json=body, headers=headers)
        return reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"

    for url in fleet.urls[1:]:
        left = 1.5 - (time.monotonic() - revoked_at)
        wait_until(functools.partial(refused, url), left, f"revocation on {url}")
    assert time.monotonic() - revoked_at <= 1.5  # key_cache_ttl_s is 1 s


@pytest.mark.timeout(30)
def test_several_workers_without_redis_are_refused(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, "http://127.0.0.1:9", "unused", 0)
    env = {k: v for k, v in os.environ.items() if k not in UNSHARED}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--workers", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert done.returncode != 0
    assert "--workers > 1 needs a shared store" in done.stderr
    assert "redis_url" in done.stderr and "TOLLGATE_REDIS_URL" in done.stderr
