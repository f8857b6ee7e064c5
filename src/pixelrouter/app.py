"""The app factory: store, providers, router, the API's routes and the web pages wired into
one FastAPI app. It sits above `api/` and `web/`, which know nothing of each other."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from pixelrouter import __version__
from pixelrouter.api.auth import current_key, key_before_body
from pixelrouter.api.batches.runner import BatchRunner
from pixelrouter.api.errors import install_error_handlers
from pixelrouter.api.handoff import ConnectionMiddleware
from pixelrouter.api.lifecycle import CANCEL_GRACE_S, DrainMiddleware, Lifecycle
from pixelrouter.api.metrics import Metrics, MetricsMiddleware
from pixelrouter.api.metrics import router as metrics_router
from pixelrouter.api.middleware import EdgeMiddleware
from pixelrouter.api.responses import OrjsonResponse
from pixelrouter.api.routes import (
    batches,
    catalog,
    chat,
    files,
    health,
    images,
    keys,
    loras,
    openai_images,
    records,
    stats,
)
from pixelrouter.api.state import AppState
from pixelrouter.billing.sweeper import sweep_forever
from pixelrouter.catalog import Catalog
from pixelrouter.config import Settings
from pixelrouter.errors import PixelrouterError
from pixelrouter.generations import GenerationService
from pixelrouter.imagestore import sweep_forever as sweep_images_forever
from pixelrouter.logs import guard_logs
from pixelrouter.lora_files import LoraUploads, restore_uploads
from pixelrouter.providers.base import Provider
from pixelrouter.routing.health import HealthConfig
from pixelrouter.routing.router import Router
from pixelrouter.store import Store
from pixelrouter.web import STATIC_DIR as WEB_STATIC_DIR
from pixelrouter.web import router as web_router

log = logging.getLogger(__name__)

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


async def check_unchecked_loras(px: AppState) -> None:
    """Once the local engine is ready, check each adapter it has not checked yet (an engine
    started before this app restored its uploads); an engine started by this app checks them
    all itself before it is ready."""
    engine = loras.local_engine(px)
    if engine is None:
        return
    while engine.state == "loading" or engine.state == "not_started":
        await asyncio.sleep(0.2)
    if engine.state != "ready":
        return
    registry = px.settings.loras
    for spec in registry.specs():
        if registry.check_of(spec.name) is None:
            try:
                await engine.register_lora(spec)
            except PixelrouterError as exc:  # the engine stopped meanwhile
                log.warning("LoRA adapter %s was not checked: %s", spec.name, exc.message)
                return


def create_app(
    settings: Settings,
    *,
    providers: list[Provider] | None = None,
    store: Store | None = None,
) -> FastAPI:
    catalog_ = Catalog()
    uploads = LoraUploads(settings.resolved_lora_dir, catalog_)
    restore_uploads(uploads, settings.loras)  # before the engine starts: it checks them all
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
            store_,
            router_,
            catalog_,
            reservation_ttl_s=settings.reservation_ttl_s,
            batch_discount_ppm=settings.batch_discount_ppm,
        ),
        demo=settings.demo,
        lora_uploads=uploads,
    )

    def record_finished(generation_id: str) -> bool:
        record = store_.get_generation(generation_id)
        return record is None or record.finished

    lifecycle = Lifecycle(settings.drain_timeout_s, record_finished=record_finished)

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
        image_sweeper = asyncio.create_task(
            sweep_images_forever(px.images_in_use, settings.storage_retention_s)
        )
        checking = asyncio.create_task(check_unchecked_loras(px))
        px.batches = BatchRunner(px)
        batch_runner = asyncio.create_task(px.batches.run_forever())
        for provider in providers_:
            await provider.start()  # background upkeep, e.g. workers found by DNS
        try:
            yield
        finally:
            # Under `pixelrouter serve` the drain already ran before uvicorn's shutdown; under
            # another server this is where generations in flight finish or are cancelled.
            px.accepting = False
            await lifecycle.drain()
            batch_runner.cancel()
            await px.batches.stop()  # unfinished items return to the queue
            await px.service.drain(CANCEL_GRACE_S)  # bookkeeping that outlives its response
            sweeper.cancel()
            image_sweeper.cancel()
            checking.cancel()
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
    app.include_router(loras.router, prefix="/api/v1")
    app.include_router(stats.router, prefix="/api/v1", dependencies=authed)
    app.include_router(records.router, prefix="/api/v1")
    app.include_router(files.router, prefix="/api/v1")
    app.include_router(batches.router, prefix="/api/v1")
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
        uploads={loras.UPLOAD_PATH: settings.max_lora_upload_mb * 1024 * 1024},
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # sees every response
    app.add_middleware(ConnectionMiddleware)  # outermost: the server's own transport
    return app
