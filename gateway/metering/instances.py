"""Instance-time: how many instances of each hourly backend were billed, per metering window.

A replica samples the count on every tick and holds each sample until the next one. Instances
are billed whether this replica runs or not, so its first sample also covers its window back to
the window's start, and its last (at shutdown) holds to the window's end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

Slot = tuple[str, int]  # (backend, window)


@dataclass(slots=True)
class InstanceTime:
    """This replica's instance-seconds per (backend, window), integrated from samples; no I/O."""

    window_s: float
    seconds: dict[Slot, float] = field(default_factory=dict)
    changed: set[Slot] = field(default_factory=set)
    since: float | None = None  # when the held counts were sampled
    held: dict[str, float] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)  # instance-seconds since the first sample

    def sample(self, now: float, counts: Mapping[str, float]) -> None:
        """Integrate the held counts up to ``now``, then hold ``counts``."""
        if self.since is None:
            start = math.floor(now / self.window_s) * self.window_s
            self._integrate(counts, start, now)
        elif now > self.since:
            self._integrate(self.held, self.since, now)
        self.since = now if self.since is None else max(self.since, now)
        self.held = dict(counts)

    def finish(self) -> None:
        """Hold the last sample to the end of its window (this replica stops watching)."""
        if self.since is None:
            return
        end = (math.floor(self.since / self.window_s) + 1) * self.window_s
        self._integrate(self.held, self.since, end)
        self.since = end

    def take(self) -> dict[Slot, float]:
        """Running totals of the windows that changed since the last take.

        A window this replica will integrate no more is forgotten once taken.
        """
        taken = {slot: self.seconds[slot] for slot in self.changed}
        self.changed = set()
        current = math.floor(self.since / self.window_s) if self.since is not None else None
        for backend, window in list(self.seconds):
            if current is None or window < current:
                del self.seconds[(backend, window)]
        return taken

    def _integrate(self, counts: Mapping[str, float], start: float, end: float) -> None:
        first = math.floor(start / self.window_s)
        for backend, count in counts.items():
            self.total[backend] = self.total.get(backend, 0.0) + count * max(0.0, end - start)
            window = first
            while window * self.window_s < end:
                lo = max(start, window * self.window_s)
                hi = min(end, (window + 1) * self.window_s)
                if hi > lo:
                    slot = (backend, window)
                    self.seconds[slot] = self.seconds.get(slot, 0.0) + count * (hi - lo)
                    self.changed.add(slot)
                window += 1
