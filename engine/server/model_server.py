"""One engine as a network server, from start-up to drain.

The gRPC port and the metrics port open at once and the model loads in a background thread:
until it is loaded ``HealthCheck`` says not live and ``Decode`` answers ``UNAVAILABLE``, so an
orchestrator (Kubernetes, the gateway's probes) can tell starting from broken. ``stop`` drains:
it refuses new RPCs, lets running ones finish for ``grace_s`` seconds, then cancels the rest
(each cancelled RPC frees its slots) and stops the batch loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable

from grpc import aio

from engine.server.metrics import MetricsExporter, ServerMetrics
from engine.server.orchestrator import Orchestrator
from engine.serving import GenerationServer, Load

log = logging.getLogger("tollgate.engine.server")
Loader = Callable[[], GenerationServer]


class ModelServer:
    """JetStream's ``Orchestrator`` service and Prometheus metrics for one engine.

    ``load`` builds the running engine (``engine.runtime.start_server``, or a test's tiny
    one); with ``close_engine=False`` the engine outlives the server (tests share one).
    """

    def __init__(
        self,
        load: Loader,
        *,
        host: str = "0.0.0.0",
        port: int = 9000,
        metrics_port: int | None = 9100,
        grace_s: float = 30.0,
        close_engine: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.metrics_port = metrics_port
        self.grace_s = grace_s
        self._load = load
        self._close_engine = close_engine
        self.metrics = ServerMetrics(self._engine_load)
        self.orchestrator = Orchestrator(self.metrics)
        self._grpc: aio.Server | None = None
        self._exporter: MetricsExporter | None = None
        self._loaded: asyncio.Future[GenerationServer] | None = None
        self.startup_s: float | None = None  # from start() to live

    def _engine_load(self) -> Load | None:
        engine = self.orchestrator.engine
        return engine.load() if engine is not None else None

    async def start(self) -> None:
        """Open both ports and begin loading the model; returns before it is loaded."""
        started = time.perf_counter()
        # Without SO_REUSEPORT a second server on a taken port fails instead of sharing it.
        self._grpc = aio.server(options=(("grpc.so_reuseport", 0),))
        self._grpc.add_generic_rpc_handlers((self.orchestrator.handler(),))
        try:
            self.port = self._grpc.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError as error:  # grpc's way of saying the address is taken
            raise OSError(f"cannot listen on {self.host}:{self.port} for gRPC") from error
        await self._grpc.start()
        if self.metrics_port is not None:
            self._exporter = MetricsExporter(
                self.metrics, self.host, self.metrics_port, lambda: self.orchestrator.live
            )
            self.metrics_port = self._exporter.port
        loop = asyncio.get_running_loop()
        self._loaded = loop.create_future()
        # A daemon thread rather than the loop's executor: a SIGTERM during a long load must
        # not wait for the load to finish before the process can exit.
        threading.Thread(
            target=self._load_in_thread,
            args=(loop, started),
            name="tollgate-engine-load",
            daemon=True,
        ).start()

    def _load_in_thread(self, loop: asyncio.AbstractEventLoop, started: float) -> None:
        began = time.perf_counter()
        try:
            engine = self._load()
        except BaseException as error:  # reported by ``loaded``; the process decides
            self._hand_over(loop, error, started)
            return
        self.metrics.model_load_time.set(time.perf_counter() - began)
        self._hand_over(loop, engine, started)

    def _hand_over(
        self,
        loop: asyncio.AbstractEventLoop,
        outcome: GenerationServer | BaseException,
        started: float,
    ) -> None:
        def settle() -> None:
            assert self._loaded is not None
            if self._loaded.done():  # stopped while loading
                return
            if isinstance(outcome, BaseException):
                self._loaded.set_exception(outcome)
                return
            self.orchestrator.engine = outcome
            self.startup_s = time.perf_counter() - started
            self.metrics.server_startup_latency.set(self.startup_s)
            self._loaded.set_result(outcome)

        # RuntimeError: the loop has closed, the server stopped before the load ended.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle)

    async def loaded(self) -> GenerationServer:
        """Wait until the model is loaded and serving; raises what the load raised."""
        if self._loaded is None:
            raise RuntimeError("start() first")
        return await asyncio.shield(self._loaded)

    async def stop(self) -> None:
        """Drain: refuse new RPCs, give running ones ``grace_s``, cancel the rest, stop."""
        self.orchestrator.draining = True
        if self._grpc is not None:
            await self._grpc.stop(self.grace_s)
        engine = self.orchestrator.engine
        if engine is not None and self._close_engine:
            await asyncio.to_thread(engine.close)
        if self._loaded is not None and not self._loaded.done():
            self._loaded.cancel()
        if self._exporter is not None:
            self._exporter.close()

    async def serve(self) -> int:
        """Run until SIGTERM or SIGINT, then drain; the exit status (1 if the load failed)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await self.start()
        except OSError:
            await self.stop()
            raise
        log.info(
            "tollgate engine: gRPC (jetstream_proto.Orchestrator) on %s:%d, metrics on %s; "
            "loading the model",
            self.host,
            self.port,
            f"http://{self.host}:{self.metrics_port}/metrics" if self.metrics_port else "none",
        )
        status = await self._until_stopped(stop)
        log.info("tollgate engine: draining (up to %.0f s for running requests)", self.grace_s)
        await self.stop()
        log.info("tollgate engine: stopped")
        return status

    async def _until_stopped(self, stop: asyncio.Event) -> int:
        waiting = asyncio.create_task(stop.wait())
        loading = asyncio.ensure_future(self.loaded())
        await asyncio.wait((waiting, loading), return_when=asyncio.FIRST_COMPLETED)
        if loading.done() and loading.exception() is not None:
            log.error("tollgate engine: the model failed to load: %s", loading.exception())
            waiting.cancel()
            return 1
        if loading.done():
            log.info("tollgate engine: live after %.1f s", self.startup_s or 0.0)
            await waiting
        else:
            loading.cancel()
        return 0
