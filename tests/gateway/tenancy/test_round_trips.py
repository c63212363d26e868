"""The request path's Redis cost: zero round trips to authenticate (cached), one to admit, one
to settle, counted at the client, whether or not the key has limits of its own."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.tenancy.models import KeyScope, Limits, MeteredLimits, UsageRecord
from gateway.tenancy.redis_store import RedisStore

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("own", [MeteredLimits(), MeteredLimits(3, 1000, 2, 1.0)])
async def test_one_round_trip_to_admit_and_one_to_settle(
    unique_prefix: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, own: MeteredLimits
) -> None:
    store = RedisStore(redis_url, prefix=unique_prefix)
    limits = Limits(requests_per_minute=100, tokens_per_minute=10_000, max_concurrent=4,
                    monthly_budget_usd=10.0)  # fmt: skip
    await store.create_tenant("acme", limits)
    secret = (await store.create_key("acme", KeyScope(limits=own))).secret  # a key's own too
    await store.authenticate(secret)  # warm the key cache and load the scripts
    warm = await store.admit(await store.authenticate(secret), tokens=1, cost_usd=0.0)
    sent: list[tuple[Any, ...]] = []
    real: Any = store.redis.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        sent.append(args)
        return await real(*args, **options)

    monkeypatch.setattr(store.redis, "execute_command", counting)
    caller = await store.authenticate(secret)
    assert sent == []
    admission = await store.admit(caller, tokens=30, cost_usd=0.01)
    assert [a[0] for a in sent] == ["EVALSHA"]
    record = UsageRecord(
        request_id=admission.request_id, tenant="acme", key_id=caller.key_id, model="gemma",
        backend="tpu", prompt_tokens=10, completion_tokens=20, cost_usd=0.008, status=200,
        started_at=time.time(), duration_s=0.2,
    )  # fmt: skip
    await store.settle(admission, record)
    assert [a[0] for a in sent] == ["EVALSHA", "EVALSHA"]
    assert warm.request_id != admission.request_id
    await store.drop_everything()
    await store.aclose()
