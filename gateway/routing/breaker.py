"""A circuit breaker per backend: closed, open after consecutive failures, half-open trials."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum


class BreakerState(Enum):
    """Where the breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """Opens after ``failures`` in a row; after ``cooldown_s`` lets one trial through."""

    failures: int = 5
    cooldown_s: float = 10.0
    state: BreakerState = BreakerState.CLOSED
    consecutive: int = 0
    opened_at: float = 0.0
    blocked_until: float = 0.0  # an Overloaded answer asks us to stay away this long
    trial_in_flight: bool = False

    def allows(self, now: float | None = None) -> bool:
        """Whether a request may be sent now (a half-open breaker admits one trial)."""
        now = time.monotonic() if now is None else now
        if now < self.blocked_until:
            return False
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.cooldown_s:
            self.state = BreakerState.HALF_OPEN
            self.trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN:
            return not self.trial_in_flight
        return self.state is BreakerState.CLOSED

    def on_attempt(self) -> None:
        """A request is being sent; in half-open it is the one trial."""
        if self.state is BreakerState.HALF_OPEN:
            self.trial_in_flight = True

    def on_success(self) -> None:
        """A request succeeded: close."""
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self.trial_in_flight = False

    def on_failure(self, now: float | None = None) -> None:
        """A request failed: count, and open when the run is long enough or a trial failed."""
        now = time.monotonic() if now is None else now
        self.consecutive += 1
        if self.state is BreakerState.HALF_OPEN or self.consecutive >= self.failures:
            self.state = BreakerState.OPEN
            self.opened_at = now
        self.trial_in_flight = False

    def back_off(self, seconds: float, now: float | None = None) -> None:
        """Skip the backend for the time it asked (Overloaded / RESOURCE_EXHAUSTED)."""
        now = time.monotonic() if now is None else now
        self.blocked_until = max(self.blocked_until, now + seconds)
