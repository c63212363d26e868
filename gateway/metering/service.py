"""``CostMeter``: the ``Meter`` serving calls, with its flush and reconciliation loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from redis.exceptions import RedisClusterException, RedisError

from gateway.errors import GatewayError
from gateway.metering.cost import PriceBook
from gateway.metering.reports import BackendEfficiency, backend_efficiency
from gateway.metering.windows import OpenWindows, Reconciler
from gateway.settings import BackendSettings, MeteringSettings
from gateway.tenancy.store import Store

log = logging.getLogger(__name__)
# What the ledger raises while the store is away (a cluster with no node answering raises the
# second, which is not a ``RedisError``).
_STORE_AWAY = (RedisError, RedisClusterException, GatewayError)
# Instances of backend NAME billed right now, or None when unknown (then config's count holds).
InstanceCount = Callable[[str], float | None]


class CostMeter:
    """Prices requests on the request path (no I/O) and books windows in the background."""

    def __init__(
        self,
        settings: MeteringSettings,
        backends: Sequence[BackendSettings],
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        tick_s: float | None = None,
        instances: InstanceCount | None = None,
    ) -> None:
        self.window_s = settings.window_s
        self.prices = PriceBook(backends, settings.prefill_weight)
        self.ledger = store.windows
        self.open = OpenWindows(self.window_s)
        self.reconciler = Reconciler(self.ledger, self.prices, self.window_s)
        self._clock = clock
        self._instances = instances
        self._tick_s = tick_s if tick_s is not None else min(1.0, self.window_s / 4)
        self._task: asyncio.Task[None] | None = None

    def worst_case_cost(self, backends: list[str], prompt_tokens: int, max_tokens: int) -> float:
        """The most a request could cost on any of ``backends`` (reserved at admission)."""
        return self.prices.worst_case_cost(backends, prompt_tokens, max_tokens)

    def provisional_cost(self, backend: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost at completion: exact for per-token prices, live-rate based for hourly ones."""
        return self.prices.provisional_cost(backend, prompt_tokens, completion_tokens)

    def weighted_tokens(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Prefill-weighted tokens, the unit instance cost is shared by."""
        return self.prices.weighted_tokens(prompt_tokens, completion_tokens)

    def observe(self, backend: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Add a finished generation to the backend's open window (in memory, no I/O)."""
        weighted = self.weighted_tokens(prompt_tokens, completion_tokens)
        self.open.observe(backend, self._clock(), prompt_tokens, completion_tokens, weighted)

    def instance_usd(self) -> Mapping[str, float]:
        """Dollars of instance time billed per hourly backend since this replica began watching
        (every replica watches the same fleet), as reconciliation will book it."""
        seconds = self.open.instances.total
        return {name: seconds.get(name, 0.0) * (price.usd_per_hour or 0.0) / 3600
                for name, price in self.prices.prices.items() if price.hourly}  # fmt: skip

    async def start(self) -> None:
        """Start window flushing and reconciliation."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def aclose(self) -> None:
        """Flush what is pending and stop; the instances stay billed to the window's end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sample()
        self.open.instances.finish()
        await self.flush()

    def sample(self) -> None:
        """Integrate how many instances of each hourly backend are billed now (no I/O)."""
        counts: dict[str, float] = {}
        for name, price in self.prices.prices.items():
            if price.hourly:
                seen = self._count(name)
                counts[name] = float(price.sunk_instances) if seen is None else max(0.0, seen)
        self.open.instances.sample(self._clock(), counts)

    async def flush(self) -> None:
        """Send this replica's window totals in one batch; kept for the next try on failure."""
        batch = self.open.take()
        if not batch:
            return
        try:
            await self.ledger.add_window_totals(batch)
        except _STORE_AWAY:
            self.open.put_back(batch)

    def _count(self, name: str) -> float | None:
        if self._instances is None:
            return None
        try:
            return self._instances(name)
        except KeyError:  # a configured backend the router does not serve: count unknown
            return None

    async def tick(self) -> None:
        """One round of background work: sample instances, flush, reconcile, refresh rates."""
        self.sample()
        await self.flush()
        now = self._clock()
        try:
            await self.reconciler.run(now)
            await self.reconciler.refresh_rates(now)
        except _STORE_AWAY as exc:
            log.warning("window reconciliation deferred: %s", exc)

    async def efficiency(self, windows: int = 60) -> list[BackendEfficiency]:
        """Realised $ / 1M output tokens per backend over its last closed windows."""
        return await backend_efficiency(
            self.ledger, self.prices, self.window_s, self._clock(), windows
        )

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)  # a timer: the work is periodic by nature
            await self.tick()
