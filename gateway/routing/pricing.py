"""What one more request costs on each backend now: the one home of routing's economics.

- Per-token APIs: the exact price (output, plus input spread over the expected answer).
- A free slot on capacity paid whether used or not (reserved instances, a pool's warm floor):
  nothing. Filling it costs only latency, which the TTFT/TPOT prediction shows.
- Anything else on an instance-priced backend keeps an elastic instance up or makes the pool
  grow: the instance's price over the output tokens/s one instance serves at the pool's target
  fill, as measured (TPOT calibrated on this backend's own answers, slots from its metrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.routing.pool import PoolState
from gateway.routing.stats import BackendStats
from gateway.settings import Price

SUNK_USD_PER_TOKEN = 0.0


@dataclass(frozen=True, slots=True)
class SlotPrice:
    """A backend's price model, read against its live pool state and stats."""

    price: Price

    @property
    def hourly(self) -> bool:
        """Whether instances are paid by the hour (else per token)."""
        return self.price.usd_per_hour is not None

    @property
    def usd_per_instance_s(self) -> float:
        """What one instance costs per second (0 for per-token backends)."""
        return (self.price.usd_per_hour or 0.0) / 3600.0

    def per_token(self, prompt_tokens: int, expected_tokens: int) -> float:
        """The exact per-token price of a request, per expected output token."""
        out = (self.price.usd_per_mtok_output or 0.0) / 1e6
        inp = (self.price.usd_per_mtok_input or 0.0) / 1e6
        return out + inp * prompt_tokens / max(1, expected_tokens)

    def instance_tokens_per_s(self, pool: PoolState, stats: BackendStats,
                              tpot_limit_s: float | None, *, max_batch: float = math.inf
                              ) -> float:
        """Output tokens/s one instance serves at the pool's target fill, within a TPOT limit
        and at most ``max_batch`` requests."""
        share = pool.fill(stats.concurrency)
        batch = max(1.0, min(pool.slots_per_instance * share, max_batch))
        if tpot_limit_s is not None:
            batch = max(1.0, min(batch, stats.batch_within(tpot_limit_s)))
        return batch / stats.tpot_at(batch)

    def elastic(self, pool: PoolState, stats: BackendStats, tpot_limit_s: float | None) -> float:
        """$ per output token of an instance kept up at the pool's target fill."""
        return self.usd_per_instance_s / self.instance_tokens_per_s(pool, stats, tpot_limit_s)

    def marginal(self, pool: PoolState, stats: BackendStats, prompt_tokens: int,
                 expected_tokens: int, tpot_limit_s: float | None) -> float:
        """$ per output token that sending this request here adds to the bill."""
        if not self.hourly:
            return self.per_token(prompt_tokens, expected_tokens)
        if not pool.elastic or stats.concurrency + 1 <= pool.sunk_slots:
            return SUNK_USD_PER_TOKEN  # a queue on reserved capacity costs latency, not dollars
        return self.elastic(pool, stats, tpot_limit_s)
