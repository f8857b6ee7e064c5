"""What the generation routes share: the edge context, running a delivery, SSE responses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from pixelrouter.errors import InternalError, PixelrouterError
from pixelrouter.service import Delivery
from pixelrouter.store import GenerationApi, KeyRecord
from pixelrouter.types import ImageRequest

from ..auth import attribution
from ..state import AppState, app_state
from ..streaming import Tick, until_disconnect, with_keepalive
from ..wire import Edge

log = logging.getLogger("pixelrouter.api")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def edge(request: Request, key: KeyRecord) -> Edge:
    px = app_state(request)
    return Edge(
        generation_id=request.state.generation_id,
        key_hash=key.hash,
        attribution=attribution(request),
        catalog=px.catalog,
        fetch=px.fetch_policy,
    )


async def deliver(request: Request, image_request: ImageRequest, api: GenerationApi) -> Delivery:
    """Generate without streaming; a client that goes away cancels its queued work."""
    px = app_state(request)
    return await until_disconnect(request, px.service.generate(image_request, api=api))


async def delivery_events(
    px: AppState, image_request: ImageRequest, api: GenerationApi
) -> AsyncIterator[Tick | Delivery | PixelrouterError]:
    """Ticks while the image is made, then the delivery or the error (never raised)."""
    try:
        async for item in with_keepalive(
            lambda on_progress: px.service.generate(
                image_request, api=api, streamed=True, on_progress=on_progress
            ),
            px.settings.keepalive_interval_s,
        ):
            yield item
    except PixelrouterError as exc:
        yield exc
    except Exception:
        log.exception("internal error while streaming %s", image_request.id)
        yield InternalError("Internal server error while generating; it has been logged.")


def sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
