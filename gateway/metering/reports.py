"""Per-backend efficiency: realised $ / 1M output tokens and tokens per dollar, fleet-wide.

An hourly backend's cost is the instance-time of its windows x its price, idle time included,
as reconciliation books it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.metering.cost import MTOK, PriceBook
from gateway.tenancy.ledger import WindowLedger


@dataclass(frozen=True, slots=True)
class BackendEfficiency:
    """What a backend's output tokens really cost over its last closed windows (idle included)."""

    backend: str
    windows: int
    output_tokens: int
    cost_usd: float
    live_usd_per_weighted_token: float

    @property
    def usd_per_mtok_output(self) -> float | None:
        """Realised cost per million output tokens (``None`` when it served none)."""
        return self.cost_usd / self.output_tokens * MTOK if self.output_tokens else None

    @property
    def tokens_per_dollar(self) -> float | None:
        """Output tokens bought per dollar."""
        return self.output_tokens / self.cost_usd if self.cost_usd > 0 else None


async def backend_efficiency(
    ledger: WindowLedger, prices: PriceBook, window_s: float, now: float, windows: int = 60
) -> list[BackendEfficiency]:
    """Realised figures per backend over the last ``windows`` closed windows."""
    last = math.floor(now / window_s) - 1
    span = list(range(last - windows + 1, last + 1))
    found: list[BackendEfficiency] = []
    for name, price in sorted(prices.prices.items()):
        totals = (await ledger.window_totals(name, span)).values()
        output = sum(t.completion_tokens for t in totals)
        if price.hourly:
            cost = sum(price.window_cost_nano(window_s, t.instance_seconds) for t in totals) / 1e9
        else:
            prompt = sum(t.prompt_tokens for t in totals)
            cost = (prompt * price.usd_per_mtok_input + output * price.usd_per_mtok_output) / MTOK
        found.append(BackendEfficiency(name, len(span), output, cost, prices.rate(name)))
    return found
