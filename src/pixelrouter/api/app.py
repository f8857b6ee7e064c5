"""The app factory: store, providers, router and routes wired into one FastAPI app."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from pixelrouter import __version__
from pixelrouter.catalog import Catalog
from pixelrouter.config import Settings
from pixelrouter.generations import GenerationService
from pixelrouter.logs import guard_logs
from pixelrouter.providers.base import Provider
from pixelrouter.routing.health import HealthConfig
from pixelrouter.routing.router import Router
from pixelrouter.stats.windows import OUTCOME_RETENTION
from pixelrouter.store import Store, utcnow
from pixelrouter.web import STATIC_DIR as WEB_STATIC_DIR
from pixelrouter.web import router as web_router

from .auth import current_key, key_before_body
from .errors import install_error_handlers
from .handoff import ConnectionMiddleware
from .lifecycle import CANCEL_GRACE_S, DEFAULT_DRAIN_TIMEOUT_S, DrainMiddleware, Lifecycle
from .metrics import Metrics, MetricsMiddleware
from .metrics import router as metrics_router
from .middleware import EdgeMiddleware
from .responses import OrjsonResponse
from .routes import catalog, chat, generations, health, images, keys, openai_images, stats
from .state import AppState

log = logging.getLogger("pixelrouter")

DESCRIPTION = """\
FLUX.2 [klein] 4B behind an OpenRouter-compatible API. Every `/api/v1` call takes
`Authorization: Bearer sk-pr-v1-...`. Errors use the envelope
`{"error": {"code", "message", "metadata": {"error_type"}}}`.
"""


def default_providers(settings: Settings) -> list[Provider]:
    """The configured `[[providers]]`, or with none this process's engine; `--no-engine`
    leaves out every `local` provider (a pure gateway)."""
    from pixelrouter.providers import build_providers, local_provider

    if settings.providers:
        configs = [c for c in settings.providers if settings.engine or c.type != "local"]
        return build_providers(configs, settings)
    return [local_provider(settings)] if settings.engine else []


def sweep_once(store: Store, settings: Settings) -> tuple[int, int]:
    """Release reservations past their expiry and close generations left pending by a
    crashed process (older than the deadline plus a grace period): both cost nothing."""
    released = store.sweep_reservations()
    stale_before = utcnow() - timedelta(seconds=settings.reservation_ttl_s)
    closed = store.mark_stale_pending(stale_before)
    store.prune_outcomes(utcnow() - OUTCOME_RETENTION)
    return released, closed


async def sweep_forever(store: Store, settings: Settings) -> None:
    while True:
        try:
            released, closed = await asyncio.to_thread(sweep_once, store, settings)
            if released or closed:
                log.warning(
                    "sweeper: released %d reservation(s), closed %d generation(s) "
                    "left by a process that stopped",
                    released,
                    closed,
                )
        except Exception:
            log.exception("the sweeper failed; it tries again")
        await asyncio.sleep(settings.sweep_interval_s)


def create_app(
    settings: Settings,
    *,
    providers: list[Provider] | None = None,
    store: Store | None = None,
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
) -> FastAPI:
    catalog_ = Catalog()
    store_ = store or Store(settings.resolved_database_url)
    # The app closes the providers it builds; injected ones belong to their creator.
    owned = providers is None
    providers_ = default_providers(settings) if providers is None else providers
    router_ = Router(
        providers_,
        deadline_s=settings.request_timeout_s,
        health=HealthConfig(cooldown_s=settings.circuit_cooldown_s),
    )
    px = AppState(
        settings=settings,
        catalog=catalog_,
        store=store_,
        providers=providers_,
        router=router_,
        service=GenerationService(
            store_, router_, catalog_, reservation_ttl_s=settings.reservation_ttl_s
        ),
        demo=settings.demo,
    )

    def record_finished(generation_id: str) -> bool:
        record = store_.get_generation(generation_id)
        return record is None or record.finished

    lifecycle = Lifecycle(drain_timeout_s, record_finished=record_finished)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        guard_logs()  # after the server configured its loggers
        await asyncio.to_thread(store_.migrate)
        generated = await asyncio.to_thread(store_.ensure_management_key, settings.admin_key)
        if generated:
            # Shown once, never stored in plain text and never logged.
            print(
                "\nA management key was created for this server. It is shown only now; "
                f"keep it safe:\n\n    {generated}\n\n"
                "Use it to create inference keys: pixelrouter keys create --name my-app\n",
                file=sys.stderr,
                flush=True,
            )
        sweeper = asyncio.create_task(sweep_forever(store_, settings))
        try:
            yield
        finally:
            # Under `pixelrouter serve` the drain already ran before uvicorn's shutdown; under
            # another server this is where generations in flight finish or are cancelled.
            px.accepting = False
            await lifecycle.drain()
            await px.service.drain(CANCEL_GRACE_S)  # bookkeeping that outlives its response
            sweeper.cancel()
            if owned:
                for provider in providers_:
                    await provider.aclose()
            if store is None:
                store_.close()

    app = FastAPI(
        title="pixelrouter",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.px = px
    app.state.lifecycle = lifecycle
    app.state.metrics = metrics = Metrics(providers_, store_)
    px.service.observers.append(metrics.generation_finished)
    install_error_handlers(app)
    authed = [Depends(current_key)]
    app.include_router(chat.router, prefix="/api/v1")
    app.include_router(images.router, prefix="/api/v1")
    app.include_router(openai_images.router, prefix="/api/v1")
    app.include_router(catalog.router, prefix="/api/v1", dependencies=authed)
    app.include_router(stats.router, prefix="/api/v1", dependencies=authed)
    app.include_router(generations.router, prefix="/api/v1")
    app.include_router(keys.router, prefix="/api/v1")
    app.include_router(health.engine_router, prefix="/api/v1")
    app.include_router(health.router)
    app.include_router(metrics_router)
    # The web pages (public: no key to view them) and their CSS, JS and Chart.js.
    app.include_router(web_router)
    app.mount("/static", StaticFiles(directory=WEB_STATIC_DIR), name="static")
    # Inside the edge middleware: a refusal while draining carries the generation id header.
    app.add_middleware(DrainMiddleware, lifecycle=lifecycle)
    app.add_middleware(
        EdgeMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        demo=settings.demo,
        on_answered=px.service.answered,
        authenticate=key_before_body,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # sees every response
    app.add_middleware(ConnectionMiddleware)  # outermost: the server's own transport
    return app
