"""``create_app(settings)``: the one place where Tollgate's parts are wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI
from starlette.responses import Response

from adapters.base import Backend
from gateway.admin.routes import admin_router, usage_router
from gateway.backends import build_backends, build_token_counter
from gateway.deps import State
from gateway.http import ORJSONResponse, RequestContext, install_error_handlers
from gateway.metering.factory import build_meter
from gateway.metering.meter import Meter
from gateway.metrics import metrics
from gateway.openai.routes import generation_routes
from gateway.openai.routes import router as openai_router
from gateway.openai.serving import Serving
from gateway.openapi import install_openapi
from gateway.routing.router import Router
from gateway.settings import Settings
from gateway.state import AppState
from gateway.telemetry import Telemetry, build_telemetry
from gateway.tenancy.factory import build_store, seed_tenants
from gateway.tenancy.seeding import Seeding
from gateway.tenancy.store import Store

log = logging.getLogger("tollgate")


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    backends: Sequence[Backend] | None = None,
    meter: Meter | None = None,
    telemetry: Telemetry | None = None,
) -> FastAPI:
    """Build the app; parts may be passed in (tests), otherwise they come from ``settings``."""
    store = store or build_store(settings.store, settings.tenants, settings.metering)
    backends = list(backends) if backends is not None else build_backends(settings)
    configs = {b.name: b for b in settings.backends}
    router = Router(backends, configs, settings.routing)
    meter = meter or build_meter(settings, store, instances=router.billed_instances)
    telemetry = telemetry or build_telemetry(settings.telemetry)
    counter = build_token_counter(settings, backends)
    admin_key = settings.admin_key or _generated_admin_key()
    state = AppState(
        settings=settings,
        store=store,
        admin_key=admin_key,
        router=router,
        meter=meter,
        telemetry=telemetry,
        serving=Serving(settings, store, router, meter, telemetry, counter),
        started_at=int(time.time()),
    )
    telemetry.watch(
        router.health, {b.name: b.kind for b in backends}, lambda: state.serving.in_flight
    )
    telemetry.locate({b.name: b.url for b in settings.backends if b.kind != "embedded"})
    telemetry.watch_store(lambda: store.degraded)
    routing = settings.routing
    telemetry.watch_costs(
        meter.instance_usd,
        {"ttft": None if routing.max_ttft_ms is None else routing.max_ttft_ms / 1000,
         "tpot": None if routing.max_tpot_ms is None else routing.max_tpot_ms / 1000},
    )  # fmt: skip

    dev_keys: list[str] = []  # the curl lines, printed once the gateway is ready
    seeding = Seeding(lambda: _seed(store, settings, dev_keys))
    began = time.monotonic()

    async def announce() -> None:
        """Say when the gateway is ready (the models loaded, the store up, tenants seeded), with
        the development keys: a key printed before its model loads only earns a 503."""
        await seeding.finished.wait()
        await router.became_ready.wait()
        print(f"tollgate: ready in {time.monotonic() - began:.1f} s", flush=True)
        for line in dev_keys:
            print(line, flush=True)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await store.start()
        await seeding.start()
        await router.start()
        await meter.start()
        announcing = asyncio.create_task(announce())
        try:
            yield
        finally:
            announcing.cancel()
            state.draining = True
            await state.serving.drain()
            await meter.aclose()
            await router.aclose()
            await seeding.aclose()
            await store.aclose()
            await telemetry.aclose()

    app = FastAPI(
        title="Tollgate",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
        docs_url=None,
        redoc_url=None,
        # Tollgate makes its own SERVER span and metrics (RequestContext): FastAPI's native
        # telemetry would duplicate them and costs a provider lookup on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.tollgate = state
    install_error_handlers(app)
    install_openapi(app)
    app.router.routes.extend(generation_routes)
    app.include_router(openai_router)
    app.include_router(admin_router)
    app.include_router(usage_router)
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)

    async def ready(state: State) -> Response:
        return await readyz(state, seeding)

    app.add_api_route("/readyz", ready, methods=["GET"], include_in_schema=False)
    if telemetry.registry is not None:
        app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(
        RequestContext,
        log_access=settings.server.access_log,
        telemetry=telemetry,
        direct=generation_routes,
    )
    return app


async def healthz() -> ORJSONResponse:
    """Alive: the process answers."""
    return ORJSONResponse({"status": "ok"})


async def readyz(state: AppState, seeding: Seeding) -> Response:
    """Ready when every configured model has a backend probed healthy, the store answers and
    the seed tenants exist."""
    store = await state.store.reachable()
    ready = store and seeding.done and state.router.ready() and not state.draining
    body = {"status": "ready" if ready else "not_ready", "phase": _phase(state, store, seeding),
            "store": "ok" if store else "unreachable",
            "seed_tenants": "created" if seeding.done else "pending",
            # While the store is away, limits hold per replica on local shares (issue 12).
            "limits": "per_replica" if state.store.degraded else "fleet",
            "backends": state.router.health()}
    return ORJSONResponse(body, status_code=200 if ready else 503)


def _phase(state: AppState, store: bool, seeding: Seeding) -> str:
    """Where start-up is: what a client waiting on ``/readyz`` would want to read."""
    if state.draining:
        return "draining"
    if not store:
        return "waiting for the store"
    if not seeding.done:
        return "seeding tenants"
    if not state.router.ready():
        return "loading backends"  # each backend's ``detail`` says how far (the engine's phase)
    return "ready"


async def _seed(store: Store, settings: Settings, dev_keys: list[str]) -> None:
    await seed_tenants(store, settings.tenants)
    dev_keys.extend(await _issue_dev_keys(store, settings))


async def _issue_dev_keys(store: Store, settings: Settings) -> list[str]:
    """Issue the seeded development keys; a curl line that uses each."""
    lines = []
    for seed in settings.tenants.seed:
        if not seed.dev_key:
            continue
        issued = await store.create_key(seed.id)
        model = settings.models[0].id if settings.models else "MODEL"
        host, port = settings.server.host, settings.server.port
        lines.append(
            f"\ntollgate: development key for tenant '{seed.id}': {issued.secret}\n"
            f"Try it:\n  curl -s http://{host}:{port}/v1/completions "
            f"-H 'Authorization: Bearer {issued.secret}' -H 'Content-Type: application/json' "
            f'-d \'{{"model": "{model}", "prompt": "The capital of France is", '
            f'"max_tokens": 16}}\'\n'
        )
    return lines


def _generated_admin_key() -> str:
    key = "tg-admin-" + secrets.token_urlsafe(24)
    log.warning("TOLLGATE_ADMIN_KEY is not set; generated admin key for this process: %s", key)
    return key
