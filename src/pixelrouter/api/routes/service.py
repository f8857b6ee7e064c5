"""Service endpoints outside `/api/v1`: `/health`, `/ready`; and `/api/v1/engine/status`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from pixelrouter.errors import ServiceUnavailable
from pixelrouter.store import KeyRecord

from ..auth import current_key
from ..errors import error_response
from ..responses import OrjsonResponse
from ..state import app_state

router = APIRouter(tags=["service"])
engine_router = APIRouter(tags=["service"])


@router.get("/health", summary="The process is alive")
async def health() -> OrjsonResponse:
    return OrjsonResponse({"status": "ok"})


@router.get("/ready", summary="Ready to generate: an engine loaded or a provider up")
async def ready(request: Request) -> OrjsonResponse:
    px = app_state(request)
    if not px.accepting:
        return error_response(ServiceUnavailable("The server is shutting down."))
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


@engine_router.get("/engine/status", summary="Queue depth of this process's engine")
async def engine_status(request: Request, _: KeyRecord = Depends(current_key)) -> OrjsonResponse:
    px = app_state(request)
    local = [p for p in px.providers if p.info.kind == "local"]
    if not local:
        raise ServiceUnavailable("This server runs no local engine (started with --no-engine).")
    status = local[0].status()
    ready, reason = local[0].readiness()
    return OrjsonResponse({"data": {**status, "ready": ready, "reason": reason}})
