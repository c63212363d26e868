"""The meter: what serving asks of the cost model (prices, provisional costs, window totals)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Meter(Protocol):
    """Prices generations and accumulates per-backend window totals off the request path."""

    def worst_case_cost(self, backends: list[str], prompt_tokens: int, max_tokens: int) -> float:
        """The most a request could cost on any of ``backends`` (reserved at admission)."""
        ...

    def provisional_cost(self, backend: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost at completion: exact for per-token prices, live-rate based for hourly ones."""
        ...

    def weighted_tokens(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Prefill-weighted tokens, the unit instance cost is shared by."""
        ...

    def observe(self, backend: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Add a finished generation to the backend's open window (in memory, no I/O)."""
        ...

    def instance_usd(self) -> Mapping[str, float]:
        """Dollars of instance time billed per hourly backend since this replica began watching
        (every replica watches the same fleet), as reconciliation will book it."""
        ...

    async def start(self) -> None:
        """Start window flushing and reconciliation."""
        ...

    async def aclose(self) -> None:
        """Flush what is pending and stop."""
        ...
