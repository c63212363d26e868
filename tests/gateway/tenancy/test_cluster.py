"""The store on a Redis Cluster: URLs, a retried admission, and primaries failing over mid-load.

The contract suite, the lease tests, the multi-process limit tests and the metering ledger tests
run on the same local cluster (``tests/redis_cluster.py``) through their own parametrisation.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydantic
import pytest

from gateway.settings import StoreSettings
from gateway.tenancy.limits import BUCKETS, LimitExceeded
from gateway.tenancy.models import Admission, Limits, Principal, UsageRecord
from gateway.tenancy.redis_client import cluster_seeds, is_cluster
from gateway.tenancy.redis_store import RedisStore
from tests.redis_cluster import LocalCluster

WINDOW_S = 1.0
LIMIT = 30  # requests per window


def test_a_cluster_url_names_seed_nodes_and_a_malformed_one_is_refused() -> None:
    url = "rediss+cluster://user:secret@10.0.0.1:7000,10.0.0.2:7001/0?ssl_cert_reqs=none"
    assert is_cluster(url) and not is_cluster("redis://127.0.0.1:6379/0")
    single, seeds = cluster_seeds(url)
    assert seeds == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert single == "rediss://user:secret@10.0.0.1:7000/0?ssl_cert_reqs=none"
    assert StoreSettings(redis_url="redis+cluster://h:7000").redis_url == "redis+cluster://h:7000"
    bad_urls = ["redis+cluster://h", "redis+cluster://h:7000,h", "redis+cluster://h:7000/3",
                "memcached://h:1", "h:6379"]  # fmt: skip
    for bad in bad_urls:
        with pytest.raises(pydantic.ValidationError):
            StoreSettings(redis_url=bad)
    with pytest.raises(pydantic.ValidationError):  # would pin every tenant to one slot
        StoreSettings(key_prefix="{tg}")


@dataclass
class Load:
    """What clients saw: admissions and refusals (Redis times), and what they settled."""

    accepted: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    settled: list[UsageRecord] = field(default_factory=list)

    def most_in_a_window(self, times: list[float] | None = None) -> int:
        """The most admissions (of ``times``, by default all) in any trailing window."""
        ok = sorted(self.accepted if times is None else times)
        return max((_in_window(ok, t) for t in ok), default=0)


def _in_window(accepted: list[float], end: float) -> int:
    return sum(1 for t in accepted if end - WINDOW_S < t <= end)


def _usage(admission: Admission) -> UsageRecord:
    prompt, completion = random.randint(1, 50), random.randint(1, 200)
    return UsageRecord(
        request_id=admission.request_id, tenant=admission.tenant, key_id=admission.key_id,
        model="gemma", backend="tpu", prompt_tokens=prompt, completion_tokens=completion,
        cost_usd=completion * 1e-6, status=200, started_at=admission.admitted_at,
        duration_s=0.0, weighted_tokens=completion + prompt / 8,
    )  # fmt: skip


async def _clients(store: RedisStore, caller: Principal, load: Load, stop: asyncio.Event) -> None:
    async def client() -> None:
        while not stop.is_set():
            try:
                admission = await store.admit(caller, tokens=1, cost_usd=0.0)
            except LimitExceeded as refused:
                load.refused.append(refused.at)
                await asyncio.sleep(0.005)  # a client backing off briefly
                continue
            load.accepted.append(admission.admitted_at)
            usage = _usage(admission)
            await store.settle(admission, usage)
            load.settled.append(usage)

    await asyncio.gather(*(client() for _ in range(4)))


async def _ledger_matches(store: RedisStore, settled: list[UsageRecord]) -> None:
    rows = await store.usage(tenant="acme", start=0, end=time.time() + 3600, group_by=[])
    assert len(rows) == 1
    row = rows[0]
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (
        len(settled),
        sum(u.prompt_tokens for u in settled),
        sum(u.completion_tokens for u in settled),
    )
    assert row.cost_usd == pytest.approx(sum(u.cost_usd for u in settled), abs=1e-9)


async def _tenant(store: RedisStore, limits: Limits) -> Principal:
    await store.create_tenant("acme", limits)
    return await store.authenticate((await store.create_key("acme")).secret)


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_an_admission_run_twice_reserves_once(
    redis_cluster: LocalCluster, unique_prefix: str
) -> None:
    # What the cluster client does when a reply is lost to a timeout: it runs the script again.
    store = RedisStore(redis_cluster.url, prefix=unique_prefix)
    caller = await _tenant(store, Limits(tokens_per_minute=1000, max_concurrent=5))
    t = store._t
    script_keys = [t("acme", name) for name in ("rq", "tok", "fl", "res", "rcost", "spend")]
    args = ["req_twice", 60.0, 600, 7, -1, 1000, 5, -1, "2026-01", 10.0, BUCKETS]
    first = await store._admit(keys=script_keys, args=args)
    again = await store._admit(keys=script_keys, args=args)
    assert first[0] == again[0] == "ok" and float(first[1]) == float(again[1])
    # 600 tokens are held once, not twice: 400 more fit, 401 do not.
    await store.admit(caller, tokens=400, cost_usd=0.0)
    with pytest.raises(LimitExceeded):
        await store.admit(caller, tokens=1, cost_usd=0.0)
    await store.drop_everything()
    await store.aclose()


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_a_primary_failing_over_mid_load_keeps_limits_exact_and_the_ledger_whole(
    redis_cluster: LocalCluster, unique_prefix: str
) -> None:
    # Policy "closed": any moment the store could not answer would fail an admission here.
    store = RedisStore(redis_cluster.url, prefix=unique_prefix, limit_window_s=WINDOW_S,
                       failure_policy="closed")  # fmt: skip
    caller = await _tenant(store, Limits(requests_per_minute=LIMIT))
    slot_key = store._t("acme", "rq")
    primary = redis_cluster.primary_of(slot_key)
    replica = redis_cluster.replica_of(primary)
    load, stop = Load(), asyncio.Event()
    clients = asyncio.create_task(_clients(store, caller, load, stop))
    await asyncio.sleep(1.2)
    await asyncio.to_thread(redis_cluster.fail_over, replica)
    await asyncio.sleep(1.2)
    stop.set()
    await clients
    assert redis_cluster.primary_of(slot_key) == replica  # the tenant's slot moved
    assert len(load.accepted) >= 2 * LIMIT and load.refused
    # Never more than the limit in any trailing window, and no refusal below it.
    assert load.most_in_a_window() == LIMIT
    assert all(_in_window(load.accepted, t) == LIMIT for t in load.refused)
    await _ledger_matches(store, load.settled)
    await store.drop_everything()
    await store.aclose()


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.timeout(40)
async def test_a_killed_primary_is_ridden_out_on_local_shares_and_nothing_settled_is_lost(
    redis_cluster: LocalCluster, unique_prefix: str, tmp_path: Path
) -> None:
    store = RedisStore(redis_cluster.url, prefix=unique_prefix, limit_window_s=WINDOW_S,
                       spool_dir=str(tmp_path / "spool"))  # fmt: skip
    caller = await _tenant(store, Limits(requests_per_minute=LIMIT))
    slot_key = store._t("acme", "rq")
    primary = redis_cluster.primary_of(slot_key)
    replica = redis_cluster.replica_of(primary)
    load, stop = Load(), asyncio.Event()
    clients = asyncio.create_task(_clients(store, caller, load, stop))
    try:
        await asyncio.sleep(0.8)
        redis_cluster.kill(primary)
        killed_at, degraded = time.time(), False
        deadline = time.monotonic() + 15
        while replica not in await asyncio.to_thread(_primaries, redis_cluster, slot_key):
            degraded = degraded or store.degraded
            assert time.monotonic() < deadline, "the replica was never promoted"
            await asyncio.sleep(0.05)
        promoted_at = time.time()
        degraded = degraded or store.degraded
        await asyncio.sleep(1.0 + WINDOW_S + 1.0)
        stop.set()
        await clients
        await asyncio.wait_for(store.replayed(), 10)
    finally:
        stop.set()
        await asyncio.to_thread(redis_cluster.restart, primary)
    assert degraded and not store.degraded  # it noticed, then limits were fleet-wide again
    # Admission went on while the slot had no primary, on this replica's share of the limit
    # (a share counts from zero, so a window across the outage may hold the limit twice)...
    assert [t for t in load.accepted if killed_at < t < promoted_at]
    assert load.most_in_a_window() <= 2 * LIMIT
    # ...and was exact again once the new primary had served a whole window (1 s of grace for
    # the client to re-read the slot map).
    steady = promoted_at + 1.0 + WINDOW_S
    later = [t for t in load.accepted if t > steady - WINDOW_S]
    assert load.most_in_a_window(later) == LIMIT
    assert all(_in_window(later, t) == LIMIT for t in load.refused if t > steady)
    # Settlements the dead primary could not take were spooled and replayed into the ledger.
    await _ledger_matches(store, load.settled)
    await store.drop_everything()
    await store.aclose()


def _primaries(cluster: LocalCluster, key: str) -> list[int]:
    try:
        return [cluster.primary_of(key)]
    except LookupError:
        return []
