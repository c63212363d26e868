"""``tollgate bench chaos``: three replicas on one Redis through a bounded storm of failures.

A private redis-server, two upstreams (a cheap one that hangs before its first token, stalls
and dies mid-stream for some requests, and a dearer steady one to fall back on) and
``--replicas`` ``tollgate serve`` processes. Three tenants' clients (one held by concurrency,
one by requests per window, one by a budget) send streamed and whole completions to random
replicas, some leaving at random, while Redis is ``kill -9``'d and restarted and one replica
is ``kill -9``'d (and restarted). Then, once the leases' TTL has passed, it prints requests by
status, limit peaks against the limits, the ledger against the tokens the upstreams sent, and
the leases left over; it exits 1 if a hard invariant broke (``bench.faults.verdict``).
Run: ``tollgate bench chaos [--duration S] [--seed N] [--replicas N] [--logs DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import orjson
import redis.asyncio as aioredis

from bench.faults.fleet import (
    MODEL,
    Child,
    RedisServer,
    Replica,
    free_port,
    replica_config,
    stop_all,
    upstream,
)
from bench.faults.load import Load
from bench.faults.report import Evidence, failures, render, rows
from bench.faults.upstream import Attempt
from bench.faults.verdict import Leases, Ledger, Tenant, Timeline

LEASE_TTL_S = 3.0  # store.lease_ttl_s: heartbeats (and checkpoints) every second
WINDOW_S = 10.0  # store.limit_window_s: the "minute" of requests per minute
TOKEN_S = 0.02  # the upstreams' time per token
FAULTS = {"hang": 0.04, "stall": 0.03, "die": 0.05}  # shares of the flaky upstream's requests
WORST_REQUEST_USD = (16 * 75 + 200 * 300) / 1e6  # the dearest backend, the longest answer
ADMIN_KEY = "tg-admin-chaos-" + secrets.token_hex(8)


@dataclass
class Fleet:
    """The run's processes."""

    redis: RedisServer
    upstreams: list[Child]
    replicas: list[Replica]
    prefix: str

    def stop(self) -> None:
        """Stop everything this run started."""
        stop_all([*self.replicas, *self.upstreams])
        self.redis.kill()


def tenants(duration: float) -> list[Tenant]:
    """The run's tenants; the budget lasts about half the run."""
    return [
        Tenant("conc", workers=8, max_concurrent=4),
        Tenant("rate", workers=5, rpm=40, max_concurrent=8),
        Tenant("budget", workers=4, max_concurrent=3, budget_usd=round(0.012 * duration, 4)),
    ]


def start(directory: Path, replicas: int, seed: int) -> Fleet:
    """Redis, the upstreams and the replicas, each ready to serve."""
    prefix = "tgchaos" + secrets.token_hex(3)
    db = directory / f"redis-{prefix}"
    db.mkdir()
    fleet = Fleet(RedisServer(db), [], [], prefix)
    try:
        fleet.redis.start()
        urls = {}
        for name, faults in (("flaky", FAULTS), ("steady", {})):
            child, urls[name] = upstream(name, directory, faults, TOKEN_S, seed)
            child.start()
            fleet.upstreams.append(child)
        for child, url in zip(fleet.upstreams, urls.values(), strict=True):
            child.wait_answering(f"{url}/health")
        env = {k: v for k, v in os.environ.items() if k != "TOLLGATE_CONFIG"}
        env |= {"TOLLGATE_REDIS_URL": fleet.redis.url, "TOLLGATE_ADMIN_KEY": ADMIN_KEY}
        for i in range(replicas):
            port = free_port()
            config = replica_config(directory, i, prefix, urls, LEASE_TTL_S, WINDOW_S)
            args = ["gateway.cli", "serve", "--config", str(config), "--port", str(port)]
            replica = Replica(
                args, directory / f"replica-{i}.log", env, url=f"http://127.0.0.1:{port}"
            )
            replica.start()
            fleet.replicas.append(replica)
        for replica in fleet.replicas:
            replica.wait_answering(f"{replica.url}/readyz")
    except BaseException:
        fleet.stop()
        raise
    return fleet


def issue_keys(url: str, plan: Sequence[Tenant]) -> dict[str, str]:
    """Create each tenant with its limits and a key, through one replica's admin API."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    keys = {}
    for t in plan:
        limits = {"max_concurrent": t.max_concurrent, "requests_per_minute": t.rpm,
                  "monthly_budget_usd": t.budget_usd}  # fmt: skip
        made = httpx.post(f"{url}/admin/tenants", headers=admin, json={"id": t.name, **limits})
        made.raise_for_status()
        issued = httpx.post(f"{url}/admin/keys", headers=admin, json={"tenant": t.name})
        issued.raise_for_status()
        keys[t.name] = issued.json()["key"]
    return keys


async def storm(fleet: Fleet, t0: float, duration: float, restart: bool) -> Timeline:
    """Redis and one replica ``kill -9``'d on a schedule; returns when it all happened."""
    outage = min(5.0, 0.15 * duration)
    victim = fleet.replicas[-1]

    async def at(offset: float) -> float:
        await asyncio.sleep(max(0.0, t0 + offset - time.time()))
        return time.time()

    down = await at(0.2 * duration)
    fleet.redis.kill()
    _say(f"{down - t0:5.1f} s  Redis kill -9")
    await at(0.2 * duration + outage)
    await asyncio.to_thread(fleet.redis.start)
    up = time.time()
    _say(f"{up - t0:5.1f} s  Redis restarted")
    killed = await at(0.5 * duration)
    victim.kill()
    _say(f"{killed - t0:5.1f} s  replica {len(fleet.replicas) - 1} kill -9")
    restarted = None
    if restart:
        restarted = await at(0.7 * duration)
        await asyncio.to_thread(victim.start_ready)
        _say(f"{restarted - t0:5.1f} s  replica {len(fleet.replicas) - 1} restarted, "
             f"ready at {time.time() - t0:.1f} s")  # fmt: skip
    return Timeline(t0, len(fleet.replicas), LEASE_TTL_S, WINDOW_S, down, up,
                    len(fleet.replicas) - 1, killed, restarted)  # fmt: skip


async def leases(fleet: Fleet, plan: Sequence[Tenant]) -> Leases:
    """The run's tenants' leases and reservations, read straight from Redis."""
    client = aioredis.Redis.from_url(fleet.redis.url, decode_responses=True)
    try:
        seconds, micros = await client.time()
        now = seconds + micros / 1e6
        live = expired = holds = reserved = 0
        for t in plan:
            key = f"{fleet.prefix}:{{{t.name}}}"
            live += await client.zcount(f"{key}:fl", f"({now}", "+inf")
            expired += await client.zcount(f"{key}:fl", "-inf", now)
            holds += await client.hlen(f"{key}:res")
            reserved += int(await client.get(f"{key}:rcost") or 0)
        return Leases(live, expired, holds, reserved / 1e9)
    finally:
        await client.aclose()


async def sweep(url: str, keys: dict[str, str]) -> None:
    """One small request per tenant: admission sweeps lapsed leases and their reservations."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        for key in keys.values():
            body = {"model": MODEL, "prompt": "sweep", "max_tokens": 1}
            auth = {"Authorization": f"Bearer {key}"}
            await http.post(f"{url}/v1/completions", headers=auth, json=body)
    await asyncio.sleep(0.5)  # settlement runs in a task of its own, after the answer


def ledger(url: str, plan: Sequence[Tenant]) -> dict[str, Ledger]:
    """Each tenant's row of ``/admin/usage``."""
    out = {}
    for t in plan:
        reply = httpx.get(f"{url}/admin/usage", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                          params={"tenant": t.name, "group_by": "tenant"})  # fmt: skip
        reply.raise_for_status()
        data = reply.json()["data"]
        row = data[0] if data else {"requests": 0, "completion_tokens": 0, "cost_usd": 0.0}
        out[t.name] = Ledger(int(row["requests"]), int(row["completion_tokens"]),
                             float(row["cost_usd"]))  # fmt: skip
    return out


async def records(fleet: Fleet, plan: Sequence[Tenant]) -> dict[str, dict[str, int]]:
    """Per tenant, the completion tokens each client request id is billed: its settled record,
    or the last checkpoint of one that never settled (its replica died)."""
    client = aioredis.Redis.from_url(fleet.redis.url, decode_responses=True)
    out: dict[str, dict[str, int]] = {}
    try:
        for t in plan:
            key = f"{fleet.prefix}:{{{t.name}}}"
            checkpoints = await client.hgetall(f"{key}:ck")
            raw = [str(v) for k, v in checkpoints.items() if str(k).startswith("rec:")]
            async for name in client.scan_iter(match=f"{key}:rec:*", count=1000):
                raw.append(str(await client.get(name) or "{}"))
            mine = out.setdefault(t.name, {})
            for record in (orjson.loads(r) for r in raw if r != "{}"):
                rid = record.get("client_request_id") or record["request_id"]
                mine[rid] = mine.get(rid, 0) + int(record["completion_tokens"])
    finally:
        await client.aclose()
    return out


def attempts(fleet: Fleet) -> list[Attempt]:
    """Every generation attempt the upstreams saw."""
    out = []
    for child in fleet.upstreams:
        port = child.args[1]
        reply = httpx.get(f"http://127.0.0.1:{port}/chaos/attempts", timeout=30.0)
        out += [Attempt(**a) for a in orjson.loads(reply.content) if a["rid"]]
    return out


async def run(fleet: Fleet, duration: float, seed: int, restart: bool) -> Evidence:
    """The load and the storm, then the evidence once the leases' TTL has passed."""
    plan = tenants(duration)
    keys = issue_keys(fleet.replicas[0].url, plan)
    load = Load([r.url for r in fleet.replicas], keys, seed)
    t0 = time.time()
    _say(f"  0.0 s  load: {sum(t.workers for t in plan)} clients for {duration:g} s")
    faults = asyncio.ensure_future(storm(fleet, t0, duration, restart))
    await load.run({t.name: t.workers for t in plan}, t0 + duration)
    timeline = await faults
    _say(f"{time.time() - t0:5.1f} s  load over; waiting {LEASE_TTL_S + 1:g} s for the leases")
    await asyncio.sleep(LEASE_TTL_S + 1.0)
    after_ttl = await leases(fleet, plan)
    url = fleet.replicas[0].url
    books, seen, billed = ledger(url, plan), attempts(fleet), await records(fleet, plan)
    await sweep(url, keys)
    return Evidence(plan, timeline, load.outcomes, seen, books, billed, after_ttl,
                    await leases(fleet, plan), WORST_REQUEST_USD)  # fmt: skip


def _say(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the storm and print the table; 1 if an invariant broke."""
    parser = argparse.ArgumentParser(
        prog="tollgate bench chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--no-restart", action="store_true", help="leave the killed replica down")
    parser.add_argument(
        "--logs", type=Path, help="keep the processes' logs, and the evidence, in this directory"
    )
    args = parser.parse_args(argv)
    if args.replicas < 2:
        parser.error("--replicas must be at least 2 (one of them is killed)")
    with tempfile.TemporaryDirectory(prefix="tollgate-chaos-") as tmp:
        directory = args.logs or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        fleet = start(directory, args.replicas, args.seed)
        try:
            evidence = asyncio.run(run(fleet, args.duration, args.seed, not args.no_restart))
        finally:
            fleet.stop()
    if args.logs:
        (args.logs / "evidence.json").write_bytes(orjson.dumps(asdict(evidence)))
    table = rows(evidence)
    bad = failures(evidence, table)
    print(render(evidence, table, bad))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
