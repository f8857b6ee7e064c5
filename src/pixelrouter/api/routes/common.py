"""What the generation routes share: the edge context, running a delivery, SSE responses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from pixelrouter.billing.bookkeeping import Admission
from pixelrouter.billing.costs import Delivery
from pixelrouter.errors import PixelrouterError, ServiceUnavailable
from pixelrouter.store import GenerationApi, KeyRecord
from pixelrouter.types import ImageRequest

from .. import render
from ..auth import attribution
from ..errors import unexpected_error
from ..handoff import Handoff, track
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
        loras=px.settings.loras,
    )


def handoff_of(request: Request) -> Handoff | None:
    """The edge's account of this response, tracked: what of it reaches the client decides
    what is charged (`handoff.py`)."""
    return track(request.scope.setdefault("state", {}))


async def deliver(request: Request, image_request: ImageRequest, api: GenerationApi) -> Delivery:
    """Generate without streaming; a client that goes away cancels its queued work. Its images
    are charged once the whole body was handed to the client's connection."""
    delivery, _ = await _deliver(request, image_request, api, as_urls=False)
    return delivery


async def deliver_urls(
    request: Request, image_request: ImageRequest, api: GenerationApi
) -> tuple[Delivery, list[str]]:
    """`deliver`, with the images put in the image store first: their signed URLs, which the
    answer carries instead of the bytes. Images that cannot be stored are never charged, and
    the answer is a 503."""
    delivery, urls = await _deliver(request, image_request, api, as_urls=True)
    assert urls is not None
    return delivery, urls


async def _deliver(
    request: Request, image_request: ImageRequest, api: GenerationApi, *, as_urls: bool
) -> tuple[Delivery, list[str] | None]:
    px = app_state(request)
    key: KeyRecord | None = getattr(request.state, "api_key", None)
    handoff = handoff_of(request)
    delivery = await until_disconnect(
        request,
        px.service.generate(image_request, api=api, key=key, edge_reports=handoff is not None),
    )
    urls = None
    if as_urls:
        try:
            urls = await store_images(request, delivery)
        except Exception as exc:
            if handoff is not None:
                handoff.images_withheld(len(delivery.result.images))
            log.exception("%s: the images could not be stored", image_request.id)
            raise ServiceUnavailable(
                "The images were made but could not be stored, so none is charged; try again "
                "or ask for response_format 'b64_json'."
            ) from exc
    if handoff is not None:
        handoff.images_in_body(len(delivery.result.images))
    return delivery, urls


async def store_images(request: Request, delivery: Delivery) -> list[str]:
    """Each image of `delivery` in the image store, byte for byte: their signed URLs, on the
    address clients reach this server at (`public_url`, else the one this request used)."""
    px = app_state(request)
    base = px.settings.public_url or str(request.base_url).rstrip("/")
    urls = []
    for image in delivery.result.images:
        stored = await px.images.put(image.data, image.media_type)
        path, _ = px.images.signed_path(stored.key)
        urls.append(base + path)
    return urls


async def admit_stream(
    request: Request, image_request: ImageRequest, api: GenerationApi
) -> Admission:
    """Admission before the stream starts, so a 402 is an HTTP 402, not an in-stream error."""
    handoff = handoff_of(request)
    return await app_state(request).service.admit(
        image_request, api=api, streamed=True, edge_reports=handoff is not None
    )


def image_chunk(handoff: Handoff | None, chunk: bytes, images: int) -> bytes:
    """A stream chunk that holds `images` whole images: they are charged once it is handed
    to the client's connection."""
    if handoff is not None and images:
        handoff.images_in_next_chunk(images, len(chunk))
    return chunk


async def delivery_events(
    px: AppState, admission: Admission
) -> AsyncIterator[Tick | Delivery | PixelrouterError]:
    """Ticks while the image is made, then the delivery or the error (never raised)."""
    try:
        async for item in with_keepalive(
            lambda on_progress: px.service.run(admission, on_progress),
            px.settings.keepalive_interval_s,
        ):
            yield item
    except PixelrouterError as exc:
        yield exc
    except Exception as exc:
        yield unexpected_error(exc, f"streaming {admission.request.id}")


def sse_response(
    px: AppState, admission: Admission, body: AsyncIterator[bytes]
) -> StreamingResponse:
    # If the client leaves before the stream starts, the admitted generation is closed.
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers=SSE_HEADERS,
        background=BackgroundTask(px.service.abandon, admission),
    )


def wants_router_metadata(request: Request) -> bool:
    return request.headers.get("x-openrouter-metadata", "").strip().lower() == "enabled"


def with_router_metadata(
    request: Request, body: dict[str, Any], delivery: Delivery
) -> dict[str, Any]:
    """The body with `openrouter_metadata` when the client asked for it."""
    if wants_router_metadata(request):
        router = app_state(request).router
        serving = [
            (model, p.info.slug)
            for model in (delivery.request.model, *delivery.request.fallback_models)
            for p in router.serves(model)
        ]
        body["openrouter_metadata"] = render.router_metadata(delivery, serving)
    return body
