"""Metering accuracy under concurrent load while the Redis server is killed and restarted.

Every request must be billed exactly once (spooled while Redis is away, replayed after), per-token
costs exactly, and every reconciled window of the hourly backend must add up to its instance cost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.metering.service import CostMeter
from gateway.settings import BackendSettings, MeteringSettings, Price
from gateway.tenancy.ledger import WindowTotals
from gateway.tenancy.models import Admission, Limits, UsageRecord
from gateway.tenancy.redis_store import RedisStore
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.slow]
W = 1.0
USD_PER_HOUR = 36.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path)
    redis.start()
    yield redis
    redis.kill()


def backends() -> list[BackendSettings]:
    return [
        BackendSettings(name="tpu", kind="jetstream", url="http://x", models={"gemma": "g"},
                        price=Price(usd_per_hour=USD_PER_HOUR)),
        BackendSettings(name="api", kind="vllm", url="http://y", models={"gemma": "g"},
                        price=Price(usd_per_mtok_input=1.0, usd_per_mtok_output=2.0)),
    ]  # fmt: skip


@pytest.mark.timeout(60)
async def test_every_request_billed_once_through_a_redis_restart(
    server: RedisServer, tmp_path: Path
) -> None:
    url = f"redis://127.0.0.1:{server.port}/0"
    store = RedisStore(url, prefix="tg", limit_window_s=W, metering_window_s=W,
                       spool_dir=str(tmp_path / "spool"))  # fmt: skip
    meter = CostMeter(MeteringSettings(window_s=W, prefill_weight=0.125), backends(), store,
                      tick_s=0.1)  # fmt: skip
    try:
        callers = []
        for tenant in ("acme", "beta"):
            await store.create_tenant(tenant, Limits(requests_per_minute=100_000))
            callers.append(await store.authenticate((await store.create_key(tenant)).secret))
        await meter.start()
        billed: list[tuple[Admission, UsageRecord]] = []
        stop = asyncio.Event()

        async def client(n: int) -> None:
            caller = callers[n % 2]
            backend = "tpu" if n % 3 else "api"
            while not stop.is_set():
                admission = await store.admit(caller, tokens=200, cost_usd=0.0)
                started = time.time()
                await asyncio.sleep(0.01)  # the generation
                prompt, out = 40 + n, 100 + n
                record = UsageRecord(
                    request_id=admission.request_id, tenant=admission.tenant,
                    key_id=caller.key_id, model="gemma", backend=backend, prompt_tokens=prompt,
                    completion_tokens=out, cost_usd=meter.provisional_cost(backend, prompt, out),
                    status=200, started_at=started, duration_s=time.time() - started,
                    weighted_tokens=meter.weighted_tokens(prompt, out),
                )  # fmt: skip
                meter.observe(backend, prompt, out)
                await store.settle(admission, record)
                billed.append((admission, record))

        clients = [asyncio.create_task(client(n)) for n in range(12)]
        await asyncio.sleep(1.0)
        server.kill()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)
        await store.replayed()
        last_window = int(time.time() // W)
        await asyncio.sleep((last_window + 2) * W - time.time() + 0.3)  # let the last window close
        await meter.aclose()
        # A lock taken just before the kill survives the restart until its TTL: retry until booked.
        while (await store.reconciled_through("tpu") or 0) < last_window:
            await meter.reconciler.run(time.time())
            await asyncio.sleep(0.1)
        await meter.reconciler.run(time.time())  # late windows from the replay

        # The outage really spooled settlements, and replay emptied the spool.
        spool = tmp_path / "spool"
        assert spool.is_dir() and not list(spool.iterdir())
        # Exactly once: every request has its record, and the counts match.
        assert len(billed) > 200
        for admission, _ in billed:
            assert await store.record(admission.tenant, admission.request_id) is not None
        rows = await store.usage(tenant=None, start=0, end=time.time() + 3600,
                                 group_by=["tenant", "backend"])  # fmt: skip
        counted = {(r.group["tenant"], r.group["backend"]): r for r in rows}
        for tenant in ("acme", "beta"):
            for backend in ("tpu", "api"):
                mine = [u for a, u in billed if a.tenant == tenant and u.backend == backend]
                row = counted[(tenant, backend)]
                assert row.requests == len(mine)
                assert row.completion_tokens == sum(u.completion_tokens for u in mine)
                if backend == "api":
                    assert row.cost_usd == pytest.approx(sum(u.cost_usd for u in mine), abs=1e-9)

        # Every reconciled window of the hourly backend adds up to its instance cost exactly.
        cost_nano = round(USD_PER_HOUR * W / 3600 * 1e9)
        first = int(min(u.started_at + u.duration_s for _, u in billed) // W)
        for window in range(first, last_window + 1):
            total = int(await store.redis.hget("tg:idle:tpu", str(window)) or 0)
            for tenant in ("acme", "beta"):
                shares = await store.redis.hgetall(f"tg:{{{tenant}}}:w:tpu:{window}")
                if shares:
                    total += int(shares["gemma|pc"]) + int(shares["gemma|adj"])
            assert total == cost_nano, window
    finally:  # a failure leaves no heartbeat or replay task behind
        await meter.aclose()
        await store.aclose()


@pytest.mark.timeout(30)
async def test_window_totals_reach_a_redis_that_forgot_its_scripts(server: RedisServer) -> None:
    store = RedisStore(f"redis://127.0.0.1:{server.port}/0", prefix="tg", metering_window_s=W)
    batch = {("tpu", 7): WindowTotals(2, 10, 20, 21.25, instance_seconds=1.5)}
    await store.add_window_totals(batch)
    await store.redis.script_flush()  # what a restart without persistence of scripts leaves
    await store.add_window_totals(batch)
    await store.add_window_totals({("tpu", 7): WindowTotals(instance_seconds=1.0)})
    # Tokens counted once per flush, instance-seconds the most any flush reported.
    assert await store.window_totals("tpu", [7]) == {7: WindowTotals(4, 20, 40, 42.5, 1.5)}
    await store.aclose()
