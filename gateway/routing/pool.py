"""A backend's instances: how many are up, ready and billed, and how many slots each has.

Instance counts come from discovery where the operator configured it (``observe_instances``),
else from the ``pool`` block and the autoscaler the exported count drives. Slots per instance
start at the operator's prior and are corrected by the backend's own metrics: a queue longer
than one decode step's arrivals, on consecutive probes, shows the real slot count, and
``running`` beyond the prior raises it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from adapters.base import LoadSnapshot
from gateway.routing.stats import Clock
from gateway.settings import PoolSettings

CONFIRMED_S = 300.0  # a slot count seen full is trusted this long, then probed again
FULL_PROBES = 2  # probes in a row that must see a lasting queue
PROBE_MARGIN = 0.05  # an unconfirmed slot count is filled this far past before a queue is expected
# Slots a pool keeps free above its load, in standard deviations of the load (square-root
# staffing): at 1.5 a request finds every slot taken a few percent of the time.
STAFFING_MARGIN = 1.5


@dataclass(slots=True)
class PoolState:
    """How many instances of one backend are up, ready and wanted, and their slot count."""

    settings: PoolSettings
    prior_slots: int  # the operator's slots per instance (``capacity.max_concurrency``)
    kind: str = ""
    clock: Clock = time.monotonic
    ready: float = 0.0  # instances serving now
    up: float = 0.0  # instances billed now: ready plus booting
    slots_per_instance: float = 0.0
    discovered: bool = False  # counts come from discovery, not config
    _confirmed_at: float | None = None  # when a lasting queue last showed the slots full
    _queued_at: int = 0  # probes in a row that saw a queue no step's arrivals explain
    _running: int | None = None  # the last probe's running count, as reported
    _booting: list[tuple[float, int]] = field(default_factory=list)  # (ready at, count) asked
    _surplus_since: float | None = None

    def __post_init__(self) -> None:
        self.slots_per_instance = float(self.prior_slots)
        self.ready = self.up = float(self.settings.sunk_instances)

    @property
    def elastic(self) -> bool:
        """Whether the pool grows and shrinks (and is paid per instance while up)."""
        return self.settings.billing == "elastic"

    @property
    def slots(self) -> float:
        """Decode slots in service across the ready instances."""
        return self.ready * self.slots_per_instance

    @property
    def planned_slots(self) -> float:
        """Slots routing fills before it expects a queue: an unconfirmed count is probed past.

        A prior that understates the slots would otherwise never be corrected: running
        beyond it is what raises the count, and the first full queue is what confirms it.
        """
        if self.confirmed or self.queue_seen:
            return self.slots  # confirmed, or a queue no step explains was just seen
        return self.ready * (self.slots_per_instance * (1 + PROBE_MARGIN) + 1)

    @property
    def confirmed(self) -> bool:
        """The slot count was seen full lately, not just assumed (it may change: re-probed)."""
        at = self._confirmed_at
        return at is not None and self.clock() - at < CONFIRMED_S

    @property
    def queue_seen(self) -> bool:
        """The last probe showed a queue that one decode step's arrivals do not explain."""
        return self._queued_at > 0

    def fill(self, concurrency: float) -> float:
        """Share of its slots the pool is sized to fill while carrying ``concurrency`` requests.

        The operator's ``target_utilisation`` where set; else square-root staffing: the
        requests in service vary by about the square root of their number, so a pool carrying
        ``c`` of them keeps ``STAFFING_MARGIN * sqrt(c)`` slots free, a share that shrinks as
        it grows (one 32-slot instance fills ~79%, a thousand requests ~95%). It is planned
        for at least one instance's worth of requests: a pool is priced on the instance it
        would add.
        """
        target = self.settings.target_utilisation
        if target is not None:
            return target
        load = max(concurrency, self.slots_per_instance, 1.0)
        return load / (load + STAFFING_MARGIN * math.sqrt(load))

    @property
    def sunk_slots(self) -> float:
        """Slots on instances paid whether used or not (reserved, or the warm floor)."""
        return min(self.ready, float(self.settings.sunk_instances)) * self.slots_per_instance

    @property
    def at_ceiling(self) -> bool:
        """No more instances can be added."""
        return self.up >= self.settings.ceiling

    # -- observations -----------------------------------------------------------------------

    def observe_instances(self, ready: int, up: int) -> None:
        """Discovery's answer: ``ready`` endpoints serving, ``up`` listed (booting included)."""
        self.discovered = True
        self.ready, self.up = float(ready), float(max(up, ready))

    def observe_load(self, snapshot: LoadSnapshot, in_flight: int,
                     arrivals_per_step: float = 0.0) -> None:
        """Learn slots per instance from the backend's own running and waiting counts.

        ``arrivals_per_step``: requests this router sends the backend in one decode step;
        that many may wait for the next step without any slot being short.
        """
        if not self.discovered and self.elastic:
            self._count_from_health(snapshot.healthy)
        if not snapshot.healthy or self.ready <= 0:
            return
        running = snapshot.running
        if running is None and self.kind == "jetstream":
            self._slots_from_share(snapshot, in_flight)
            return
        if running is None:
            return
        per = running / self.ready
        # More waiting than one step's arrivals can explain, at more than half the instances'
        # worth (a waiter is behind a full instance; a balancer that picks at random leaves
        # some full while others have room, so one waiter alone is not a full pool, but a
        # queue waiting for slots as they free fluctuates below one per instance), on two
        # probes in a row, with the running count no longer rising: every slot is taken. A
        # queue while running still grows is a backlog being admitted (a burst's prefills on
        # instances that just came up), not a full server. At a low rate a full instance
        # shows one waiter at a time: that one counts, or its slot prior, if overstated, is
        # never corrected while TTFTs climb.
        waiting = snapshot.waiting or 0
        last = self._running
        rising = last is not None and running > last + max(1.0, 0.02 * running)
        self._running = running
        queued = (waiting > 2.0 * arrivals_per_step and 2.0 * waiting > self.ready
                  and running > 0 and not rising)
        self._queued_at = self._queued_at + 1 if queued else 0
        if self._queued_at >= FULL_PROBES:
            # At most halved at once: a queue can also be a prefill backlog after a burst.
            self.slots_per_instance = max(1.0, per, self.slots_per_instance / 2)
            self._confirmed_at = self.clock()
        elif per > self.slots_per_instance:
            self.slots_per_instance = per

    def saw_full(self) -> None:
        """A request sent past the slots in service waited for one: the count is full."""
        if self.ready > 0:
            self._confirmed_at = self.clock()

    def _slots_from_share(self, snapshot: LoadSnapshot, in_flight: int) -> None:
        """JetStream reports the share of its slots in use and its backlog, not a count.

        What this replica has in flight, less the backlog, is running: over the share, that
        is the slot count (when this replica is the server's only client, as it is for a
        pool it alone routes to; with several replicas the figure is a lower bound).
        """
        share = snapshot.kv_usage
        running = in_flight - (snapshot.waiting or 0)
        if share is None or share < 0.05 or running < 4:
            return  # too little traffic to read a slot count from
        per = running / share / self.ready
        if share >= 0.99 or per > self.slots_per_instance:
            self.slots_per_instance = per
            if share >= 0.99:
                self._confirmed_at = self.clock()

    def _count_from_health(self, healthy: bool) -> None:
        """Without discovery, a failed probe means nothing is ready, a passing one at least one."""
        self._settle_boots()
        booting = sum(n for _, n in self._booting)
        if not healthy:
            self.ready = 0.0
        elif self.ready < 1:
            self.ready = max(1.0, self.up - booting)
        self.up = max(self.up, self.ready)

    def asked(self, desired: int) -> None:
        """The wanted count was exported: without discovery, follow the autoscaler it drives.

        It adds instances at once (billed from then, serving ``scale_up_s`` later) and removes
        a surplus once it has lasted ``scale_down_s``, as the pool's settings say.
        """
        if self.discovered or not self.elastic:
            return
        now = self.clock()
        self._settle_boots()
        if desired > self.up:
            self._booting.append((now + self.settings.scale_up_s, int(desired - self.up)))
            self.up = float(desired)
            self._surplus_since = None
        elif desired < self.up:
            if self._surplus_since is None:
                self._surplus_since = now
            elif now - self._surplus_since >= self.settings.scale_down_s:
                self.up = float(desired)
                self.ready = min(self.ready, self.up)
                self._surplus_since = None
                self._cancel_boots(int(self.up - self.ready))
        else:
            self._surplus_since = None
        self._settle_boots()

    def _cancel_boots(self, keep: int) -> None:
        """Scaled down: booting instances go first, the newest first (as a ReplicaSet picks
        pods to delete), so at most ``keep`` of the boots still under way will come up."""
        kept: list[tuple[float, int]] = []
        for ready_at, count in sorted(self._booting):
            if keep <= 0:
                break
            kept.append((ready_at, min(count, keep)))
            keep -= count
        self._booting = kept

    def _settle_boots(self) -> None:
        now = self.clock()
        done = [b for b in self._booting if b[0] <= now]
        if done:
            self._booting = [b for b in self._booting if b[0] > now]
            self.ready = min(self.up, self.ready + sum(n for _, n in done))

    # -- what it costs ------------------------------------------------------------------------

    def billed_instances(self) -> float:
        """Instances paid for now (up, booting or idle), as metering books them."""
        if not self.elastic:
            return float(self.settings.instances)
        return self.up
