"""`POST /api/v1/images`: the OpenRouter Image API, plain and SSE."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from pixelrouter.billing.bookkeeping import Admission
from pixelrouter.billing.costs import Delivery
from pixelrouter.errors import PixelrouterError
from pixelrouter.sse import KEEPALIVE
from pixelrouter.store import KeyRecord

from .. import render, wire
from ..auth import inference_key
from ..handoff import Handoff
from ..responses import OrjsonResponse
from ..schemas import ImagesRequest, ImagesResponse
from ..state import AppState, app_state
from ..streaming import Tick
from .common import (
    admit_stream,
    deliver,
    delivery_events,
    edge,
    handoff_of,
    image_chunk,
    sse_response,
    with_router_metadata,
)
from .openapi import BEARER, GENERATION_ERRORS, GENERATION_LINKS, errors, ok

router = APIRouter(tags=["images"], dependencies=BEARER, responses=errors(*GENERATION_ERRORS))


@router.post(
    "/images",
    summary="Generate images (OpenRouter Image API)",
    responses=ok(ImagesResponse, stream=True, links=GENERATION_LINKS),
)
async def create_images(
    body: ImagesRequest,
    request: Request,
    key: KeyRecord = Depends(inference_key),
) -> Response:
    await app_state(request).service.check_credit(
        key, body.model, body.n, references=len(body.input_references or ())
    )
    image_request = await wire.from_images(body, edge(request, key))
    if image_request.stream:
        px = app_state(request)
        admission = await admit_stream(request, image_request, "images")
        return sse_response(px, admission, _images_stream(px, admission, handoff_of(request)))
    delivery = await deliver(request, image_request, "images")
    return OrjsonResponse(with_router_metadata(request, render.images_response(delivery), delivery))


def stream_error(error: PixelrouterError) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {
            "message": error.message,
            "code": str(error.status),
            "type": error.error_type,
            "param": None,
        },
    }


async def _images_stream(
    px: AppState, admission: Admission, handoff: Handoff | None
) -> AsyncIterator[bytes]:
    yield render.sse_comment(KEEPALIVE)
    async for item in delivery_events(px, admission):
        if isinstance(item, Tick):
            yield item.comment()
        elif isinstance(item, PixelrouterError):
            yield render.sse_data(stream_error(item))
        elif isinstance(item, Delivery):
            images = item.result.images
            created = int(time.time())
            for i, image in enumerate(images):
                event: dict[str, Any] = {
                    "type": "image_generation.completed",
                    "b64_json": render.b64(image),
                    "media_type": image.media_type,
                    "created": created,
                    "index": i,
                }
                if i == len(images) - 1:  # the request's usage, once
                    event["usage"] = render.usage(item)
                yield image_chunk(handoff, render.sse_data(event), 1)
    yield render.sse_data("[DONE]")
