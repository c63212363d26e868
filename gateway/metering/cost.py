"""Price models: exact per-token prices, and live-rate provisional costs for hourly instances.

An hourly backend costs its instance-time x ``usd_per_hour``: every instance that was up, used or
not. A request's provisional cost is its weighted tokens (prefill x ``prefill_weight`` + output)
times the backend's live rate: the instance cost of its last busy closed windows per weighted
token, or, before any, the capacity prior (``usd_per_hour`` over the output tokens per hour one
instance is expected to sustain). A window one small request had alone measures no rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.settings import BackendSettings
from gateway.tenancy.ledger import WindowTotals

MTOK = 1_000_000
# A window one request had alone, busy for less than this share of what the capacity prior
# says its instance-time could serve, measures no rate: its rate is the whole window over a
# few tokens, and the next request priced at it would carry a window too. (Reconciliation
# still charges each window in full; the live rate prices what a request is likely to share.)
MIN_LONE_FILL = 0.01


@dataclass(frozen=True, slots=True)
class BackendPrice:
    """One backend's price: hourly (``usd_per_hour``) or per million tokens."""

    name: str
    usd_per_hour: float | None
    usd_per_mtok_input: float
    usd_per_mtok_output: float
    prior_usd_per_weighted_token: float
    sunk_instances: int = 1  # from config: the reserved instances, or the pool's warm floor

    @property
    def hourly(self) -> bool:
        """Whether the backend is paid by the hour (and so reconciled per window)."""
        return self.usd_per_hour is not None

    def window_cost_nano(self, window_s: float, instance_seconds: float | None) -> int:
        """A window's cost in nano-dollars: its instance-time x the price.

        A window nobody observed is billed config's count of instances (``sunk_instances``).
        """
        seconds = self.sunk_instances * window_s if instance_seconds is None else instance_seconds
        # Instance-time is sampled on a clock: a millisecond is far below what it resolves, and
        # rounding to it keeps an exactly covered window exactly priced.
        return round(round(seconds, 3) * (self.usd_per_hour or 0.0) * 1e9 / 3600)


def price_of(backend: BackendSettings) -> BackendPrice:
    """The price model config describes for ``backend``."""
    price = backend.price
    hourly = price.usd_per_hour
    per_token_s = backend.capacity.output_tokens_per_s
    return BackendPrice(
        name=backend.name,
        usd_per_hour=hourly,
        usd_per_mtok_input=price.usd_per_mtok_input or 0.0,
        usd_per_mtok_output=price.usd_per_mtok_output or 0.0,
        prior_usd_per_weighted_token=(hourly or 0.0) / 3600 / per_token_s,
        sunk_instances=backend.pool.sunk_instances,
    )


class PriceBook:
    """Every backend's price and live rate; pure arithmetic, safe on the request path."""

    def __init__(self, backends: Sequence[BackendSettings], prefill_weight: float) -> None:
        self.prices = {b.name: price_of(b) for b in backends}
        self.prefill_weight = prefill_weight
        self._rates = {name: p.prior_usd_per_weighted_token for name, p in self.prices.items()}

    def weighted_tokens(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Prefill-weighted tokens: prefill is cheap per token next to decode."""
        return prompt_tokens * self.prefill_weight + completion_tokens

    def rate(self, backend: str) -> float:
        """The live $ per weighted token of an hourly backend."""
        return self._rates.get(backend, 0.0)

    def set_rate(self, backend: str, usd_per_weighted_token: float | None) -> None:
        """Adopt a measured rate (``None``: fall back to the capacity prior)."""
        price = self.prices[backend]
        self._rates[backend] = (
            price.prior_usd_per_weighted_token
            if usd_per_weighted_token is None
            else usd_per_weighted_token
        )

    def measure(self, backend: str, windows: Iterable[WindowTotals], window_s: float) -> None:
        """Adopt the rate closed windows measure: their instance cost per weighted token,
        leaving out any a lone request had nearly idle (``MIN_LONE_FILL``)."""
        price = self.prices[backend]
        weighted, nano = 0.0, 0
        for w in windows:
            cost = price.window_cost_nano(window_s, w.instance_seconds)
            capacity = cost / 1e9 / price.prior_usd_per_weighted_token if cost else 0.0
            lone = w.requests < 2 and w.weighted_tokens < MIN_LONE_FILL * capacity
            if w.weighted_tokens > 0 and not lone:
                weighted += w.weighted_tokens
                nano += cost
        # Busy windows that cost nothing (a count that lagged a scale-up) measure no rate.
        self.set_rate(backend, nano / 1e9 / weighted if weighted and nano else None)

    def provisional_cost(self, backend: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Exact for per-token prices; weighted tokens x live rate for hourly ones."""
        price = self.prices.get(backend)
        if price is None:
            return 0.0
        if price.hourly:
            return self.weighted_tokens(prompt_tokens, completion_tokens) * self.rate(backend)
        return (
            prompt_tokens * price.usd_per_mtok_input + completion_tokens * price.usd_per_mtok_output
        ) / MTOK

    def worst_case_cost(
        self, backends: Sequence[str], prompt_tokens: int, max_tokens: int
    ) -> float:
        """The most the request could cost on any candidate: reserved against the budget."""
        return max(
            (self.provisional_cost(b, prompt_tokens, max_tokens) for b in backends), default=0.0
        )
