"""Virtual time: a clock the Router reads and an event queue that advances it."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

Action = Callable[[], None]


@dataclass(slots=True)
class EventQueue:
    """Runs actions in time order; ``now`` is the virtual clock (a callable reads it)."""

    now: float = 0.0
    _heap: list[tuple[float, int, Action]] = field(default_factory=list)
    _seq: int = 0

    def __call__(self) -> float:
        return self.now

    def at(self, when: float, action: Action) -> None:
        """Run ``action`` at virtual time ``when`` (never in the past)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.now), self._seq, action))

    def run(self, until: float, *, stop: Callable[[], bool] | None = None) -> None:
        """Advance through events up to ``until``, or until ``stop()`` says so."""
        heap = self._heap
        while heap and heap[0][0] <= until:
            when, _, action = heapq.heappop(heap)
            self.now = when
            action()
            if stop is not None and stop():
                return
        self.now = max(self.now, until)
