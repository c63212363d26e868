"""What a run cost: an instance price times the run's wall time, or exact per-token prices.

Self-hosted accelerators are paid by the hour: a rate's tokens cost ``usd_per_hour x wall
time``, so output tokens per dollar rise as batching fills the instance. An API is paid by the
token: ``prompt x in + completion x out``, whatever the rate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Price:
    """An instance's hourly price, or per-token prices in dollars per million tokens."""

    usd_per_hour: float | None = None
    usd_per_mtok_in: float | None = None
    usd_per_mtok_out: float | None = None

    def __post_init__(self) -> None:
        per_token = self.usd_per_mtok_in is not None or self.usd_per_mtok_out is not None
        if self.usd_per_hour is not None and per_token:
            raise ValueError("give an hourly price or per-token prices, not both")

    @property
    def given(self) -> bool:
        """Whether there is any price to work with."""
        return self.usd_per_hour is not None or self.per_token

    @property
    def per_token(self) -> bool:
        """Priced by the token rather than by the hour."""
        return self.usd_per_mtok_in is not None or self.usd_per_mtok_out is not None

    def cost(self, wall_s: float, prompt_tokens: int, output_tokens: int) -> float | None:
        """Dollars for a run of ``wall_s`` seconds that served these tokens (None: no price)."""
        if self.usd_per_hour is not None:
            return self.usd_per_hour * wall_s / 3600
        if self.per_token:
            return (prompt_tokens * (self.usd_per_mtok_in or 0.0)
                    + output_tokens * (self.usd_per_mtok_out or 0.0)) / 1e6
        return None

    def describe(self) -> str:
        """One line for the report."""
        if self.usd_per_hour is not None:
            return f"${self.usd_per_hour:g}/hour x each rate's wall time"
        if self.per_token:
            return (f"${self.usd_per_mtok_in or 0:g}/1M input + "
                    f"${self.usd_per_mtok_out or 0:g}/1M output tokens")
        return "none given (--usd-per-hour, or --usd-per-mtok-in and --usd-per-mtok-out)"


def tokens_per_usd(tokens: int, usd: float | None) -> float | None:
    """Tokens per dollar (None without a cost or for a free run)."""
    return tokens / usd if usd else None


def usd_per_mtok(usd: float | None, tokens: int) -> float | None:
    """Dollars per million tokens (None without a cost or without tokens)."""
    return usd * 1e6 / tokens if usd is not None and tokens else None
