"""``tollgate bench admission``: what admission plus settlement add to a request, on real Redis.

Prints p50/p90/p99 of one admit + settle (two EVALSHA round trips) at each concurrency, on one
Redis (``redis://``) or a Redis Cluster (``redis+cluster://host:port``); ``--tenants`` spreads
the load over tenants, hence over a cluster's slots.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time

from gateway.tenancy.models import Limits, Principal, UsageRecord
from gateway.tenancy.redis_store import RedisStore


async def _worker(store: RedisStore, caller: Principal, count: int, out: list[float]) -> None:
    for _ in range(count):
        begin = time.perf_counter()
        admission = await store.admit(caller, tokens=300, cost_usd=0.0001)
        record = UsageRecord(
            request_id=admission.request_id, tenant=admission.tenant, key_id=admission.key_id,
            model="gemma", backend="tpu", prompt_tokens=100, completion_tokens=150,
            cost_usd=0.00008, status=200, started_at=admission.admitted_at, duration_s=0.0,
            weighted_tokens=162.5,
        )  # fmt: skip
        await store.settle(admission, record)
        out.append(time.perf_counter() - begin)


async def _run(url: str, concurrency: int, requests: int, tenants: int) -> list[float]:
    store = RedisStore(url, prefix=f"tgbench{secrets.token_hex(4)}")
    limits = Limits(requests_per_minute=10**9, tokens_per_minute=10**12, max_concurrent=10**6,
                    monthly_budget_usd=10**9)  # fmt: skip
    callers: list[Principal] = []
    for n in range(tenants):
        await store.create_tenant(f"bench-{n}", limits)
        callers.append(await store.authenticate((await store.create_key(f"bench-{n}")).secret))
    for caller in callers:
        await _worker(store, caller, max(1, 50 // tenants), [])  # warm connections and scripts
    samples: list[float] = []
    per = max(1, requests // concurrency)
    try:
        await asyncio.gather(
            *(_worker(store, callers[n % tenants], per, samples) for n in range(concurrency))
        )
    finally:
        await store.drop_everything()
        await store.aclose()
    return samples


def _ms(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] * 1000 if q < 100 else max(samples)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per concurrency."""
    parser = argparse.ArgumentParser(prog="tollgate bench admission", description=__doc__)
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="redis://host:port/db, or redis+cluster://host:port[,host:port...] for a cluster",
    )
    parser.add_argument("--concurrency", default="1,64", help="comma-separated levels")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--tenants", type=int, default=1, help="clients take turns among them")
    args = parser.parse_args(argv)
    if args.tenants < 1:
        parser.error("--tenants must be at least 1")
    print("concurrency  requests  p50_ms  p90_ms  p99_ms  admit+settle/s")
    for level in (int(c) for c in args.concurrency.split(",")):
        begin = time.perf_counter()
        samples = asyncio.run(_run(args.redis_url, level, args.requests, args.tenants))
        rate = len(samples) / (time.perf_counter() - begin)
        print(f"{level:>11}  {len(samples):>8}  {_ms(samples, 50):6.3f}  {_ms(samples, 90):6.3f}"
              f"  {_ms(samples, 99):6.3f}  {rate:14.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
