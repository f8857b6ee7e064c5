"""Health endpoints outside `/api/v1`: `/health`, `/ready`; and `/api/v1/engine/status`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from pixelrouter.errors import ServiceUnavailable
from pixelrouter.store import KeyRecord

from ..auth import current_key
from ..errors import error_response
from ..responses import OrjsonResponse
from ..schemas import EngineStatus, Health, Ready
from ..state import app_state
from .openapi import BEARER, errors, ok

router = APIRouter(tags=["service"])
engine_router = APIRouter(tags=["service"], dependencies=BEARER, responses=errors(401, 503))


@router.get("/health", summary="The process is alive", responses={**ok(Health), **errors()})
async def health() -> OrjsonResponse:
    return OrjsonResponse({"status": "ok"})


@router.get(
    "/ready",
    summary="Ready to generate: an engine loaded or a provider up",
    responses={**ok(Ready), **errors(503)},
)
async def ready(request: Request) -> OrjsonResponse:
    px = app_state(request)
    lifecycle = getattr(request.app.state, "lifecycle", None)
    if lifecycle is not None and lifecycle.draining:
        # A load balancer stops sending work here while the generations in flight finish.
        return error_response(
            ServiceUnavailable(
                "The server is shutting down: it finishes the generations in flight "
                f"({lifecycle.in_flight} now) and takes no new ones.",
                metadata={"reason": "draining", "in_flight": lifecycle.in_flight},
            )
        )
    if not px.accepting:
        return error_response(
            ServiceUnavailable("The server is shutting down.", metadata={"reason": "stopping"})
        )
    ok, reason = px.router.ready()
    if not ok:
        return error_response(ServiceUnavailable(f"Not ready: {reason}"))
    providers = []
    for provider in px.providers:
        provider_ok, provider_reason = provider.readiness()
        providers.append(
            {
                "name": provider.info.slug,
                "display_name": provider.info.display_name,
                "ready": provider_ok,
                "reason": provider_reason,
            }
        )
    return OrjsonResponse({"status": "ready", "reason": reason, "providers": providers})


@engine_router.get(
    "/engine/status",
    summary="Queue depth of this process's engine",
    responses=ok(EngineStatus),
)
async def engine_status(request: Request, _: KeyRecord = Depends(current_key)) -> OrjsonResponse:
    px = app_state(request)
    local = [p for p in px.providers if p.info.kind == "local"]
    if not local:
        raise ServiceUnavailable("This server runs no local engine (started with --no-engine).")
    status = {**local[0].status().details}
    ready, reason = local[0].readiness()
    lifecycle = getattr(request.app.state, "lifecycle", None)
    if lifecycle is not None and lifecycle.draining:
        # A gateway polling this stops sending work here at once (docs/deploy.md, draining).
        status["state"], ready, reason = "draining", False, "draining: shutting down"
    return OrjsonResponse({"data": {**status, "ready": ready, "reason": reason}})
