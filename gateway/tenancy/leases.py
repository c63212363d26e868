"""The leases one replica holds: renewed together on each heartbeat, with progress checkpoints.

A concurrency lease in Redis lives ``ttl_s`` unless the replica holding it renews it, so the
leases of a replica that dies lapse within seconds and give back what they reserved. Renewal
is batched: one round trip per replica per heartbeat (``ttl_s / 3``), however many requests
run. The same heartbeat checkpoints what long requests have used so far, so the ledger loses
at most one heartbeat's worth of a dead replica's usage. A renewal lists the lease again if it
lapsed (Redis was away longer than the TTL) or was never listed (admitted on local shares while
Redis was away), so every live request counts fleet-wide once Redis answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.tenancy.limits import LEASE_MAX_S, to_nano
from gateway.tenancy.models import Admission, UsageRecord

log = logging.getLogger(__name__)
Progress = Callable[[], UsageRecord | None]  # what a live request has used so far, if anything
BEATS_PER_TTL = 3  # a lease survives two missed heartbeats


@dataclass(slots=True)
class Lease:
    """One live request's lease, and how to read its progress."""

    admission: Admission
    since: float  # monotonic, when it was admitted
    progress: Progress | None = None
    booked: tuple[int, int, int] | None = None  # (prompt, completion, cost nano) checkpointed


@dataclass(frozen=True, slots=True)
class Beat:
    """What one heartbeat sends: leases to renew per tenant (key ``None``) and per key with
    limits of its own, and progress to checkpoint."""

    renew: dict[tuple[str, str | None], list[str]]
    checkpoints: list[tuple[Lease, UsageRecord]]


class Leases:
    """This replica's live leases (in memory, no I/O): the heartbeat reads and marks them."""

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.interval_s = ttl_s / BEATS_PER_TTL
        self._clock = clock
        self._live: dict[str, Lease] = {}

    def __len__(self) -> int:
        return len(self._live)

    def hold(self, admission: Admission) -> None:
        """Start renewing ``admission``'s lease."""
        self._live[admission.request_id] = Lease(admission, self._clock())

    def follow(self, admission: Admission, progress: Progress) -> None:
        """Checkpoint ``progress()`` on each heartbeat while the request lives."""
        lease = self._live.get(admission.request_id)
        if lease is not None:
            lease.progress = progress

    def release(self, request_id: str) -> None:
        """Stop renewing: the request is settling."""
        self._live.pop(request_id, None)

    def beat(self) -> Beat:
        """The renewals and checkpoints due now.

        A request younger than one heartbeat is not checkpointed (most finish before the
        next one), nor one whose usage has not changed since its last checkpoint. A lease
        older than ``LEASE_MAX_S`` is dropped: its request never settled, and renewing it
        forever would hold the tenant's capacity forever.
        """
        now = self._clock()
        renew: dict[tuple[str, str | None], list[str]] = {}
        checkpoints: list[tuple[Lease, UsageRecord]] = []
        for rid, lease in list(self._live.items()):
            age = now - lease.since
            if age > LEASE_MAX_S:
                del self._live[rid]
                continue
            admission = lease.admission
            renew.setdefault((admission.tenant, None), []).append(rid)
            if admission.key_metered:
                renew.setdefault((admission.tenant, admission.key_id), []).append(rid)
            if lease.progress is None or age < self.interval_s:
                continue
            try:
                usage = lease.progress()
            except Exception:  # one bad reading must not cost every lease its renewal
                log.exception("progress of %s unreadable", rid)
                continue
            if usage is None:
                continue
            amounts = (usage.prompt_tokens, usage.completion_tokens, to_nano(usage.cost_usd))
            if amounts != lease.booked:
                checkpoints.append((lease, usage))
        return Beat(renew, checkpoints)

    @staticmethod
    def booked(lease: Lease, usage: UsageRecord) -> None:
        """Remember what a checkpoint that reached the store booked."""
        lease.booked = (usage.prompt_tokens, usage.completion_tokens, to_nano(usage.cost_usd))
