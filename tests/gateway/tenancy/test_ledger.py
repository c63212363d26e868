"""Usage by key: reconciliation spread over a cell's keys, and aggregates older than keys."""

from __future__ import annotations

import time

import pytest

from gateway.tenancy.ledger import (
    IDLE,
    UNATTRIBUTED,
    Cell,
    Counters,
    group_rows,
    hour_of,
)
from gateway.tenancy.models import UsageRecord
from gateway.tenancy.redis_store import RedisStore

HOUR = 480_000


def _cell(key: str | None, model: str = "gemma") -> Cell:
    return Cell("acme", HOUR, "tpu", model, key)


def test_an_adjustment_is_spread_over_the_keys_by_cost_and_adds_up_exactly() -> None:
    cells = [
        (_cell("key_a"), Counters(2, 10, 20, cost_nano=3)),
        (_cell("key_b"), Counters(1, 5, 5, cost_nano=1)),
        (_cell(None), Counters(adjust_nano=-1001)),  # reconciliation made the hour cheaper
        (_cell(None, "llama"), Counters(adjust_nano=7)),  # no key used llama this hour
        (_cell("key_a", "mistral"), Counters(1, 0, 0)),  # no cost, no tokens: by requests
        (_cell(None, "mistral"), Counters(adjust_nano=5)),
        (Cell(IDLE, HOUR, "tpu", IDLE, IDLE), Counters(cost_nano=40)),
    ]
    rows = {r.group["key"]: r for r in group_rows(cells, ["key"])}
    assert set(rows) == {"key_a", "key_b", UNATTRIBUTED, IDLE}
    assert rows["key_a"].requests == 3 and rows["key_b"].requests == 1
    nano = {k: round(r.cost_usd * 1e9) for k, r in rows.items()}
    # -1001 by 3:1 is -751 and -251 rounded down, and the remainder goes to the larger.
    assert nano == {"key_a": 3 - 750 + 5, "key_b": 1 - 251, UNATTRIBUTED: 7, IDLE: 40}
    whole = group_rows(cells, ["tenant"])
    assert sum(round(r.cost_usd * 1e9) for r in whole) == sum(nano.values())


@pytest.mark.redis
@pytest.mark.anyio
async def test_usage_aggregated_before_keys_is_reported_under_a_placeholder(
    unique_prefix: str, redis_url: str
) -> None:
    store = RedisStore(redis_url, prefix=unique_prefix)
    issued = await store.create_key("acme")
    caller = await store.authenticate(issued.secret)
    now = time.time()
    hour = hour_of(now)
    # What an older gateway wrote: counters per backend and model only.
    agg = f"{unique_prefix}:{{acme}}:agg:{hour}"
    await store.redis.hset(agg, mapping={"tpu|gemma|n": 2, "tpu|gemma|p": 8, "tpu|gemma|c": 40,
                                         "tpu|gemma|cost": 4000})  # fmt: skip
    await store.redis.zadd(f"{unique_prefix}:{{acme}}:hours", {str(hour): hour})
    admission = await store.admit(caller, tokens=10, cost_usd=0.0)
    await store.settle(admission, UsageRecord(
        request_id="", tenant="acme", key_id=caller.key_id, model="gemma", backend="tpu",
        prompt_tokens=4, completion_tokens=6, cost_usd=0.000002, status=200, started_at=now,
        duration_s=0.1,
    ))  # fmt: skip
    try:
        end = now + 3600
        rows = await store.usage(tenant="acme", start=0, end=end, group_by=["key", "model"])
        assert [(r.group, r.requests, r.completion_tokens) for r in rows] == [
            ({"key": UNATTRIBUTED, "model": "gemma"}, 2, 40),
            ({"key": caller.key_id, "model": "gemma"}, 1, 6),
        ]
        rows = await store.usage(tenant=None, start=0, end=end, group_by=["tenant"])
        assert [(r.group, r.requests, r.cost_usd) for r in rows] == [
            ({"tenant": "acme"}, 3, pytest.approx(0.000006))
        ]
    finally:
        await store.drop_everything()
        await store.aclose()
