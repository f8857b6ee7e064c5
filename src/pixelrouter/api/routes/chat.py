"""`POST /api/v1/chat/completions`: image output through the chat API, plain and SSE."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from pixelrouter.errors import PixelrouterError
from pixelrouter.service import Delivery
from pixelrouter.store import KeyRecord
from pixelrouter.types import ImageRequest

from .. import render, wire
from ..auth import inference_key
from ..responses import OrjsonResponse
from ..schemas import ChatCompletionRequest
from ..state import AppState, app_state
from ..streaming import KEEPALIVE, Tick
from .common import deliver, delivery_events, edge, sse_response

router = APIRouter(tags=["chat"])


@router.post("/chat/completions", summary="Create a chat completion with image output")
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    key: KeyRecord = Depends(inference_key),
) -> Response:
    image_request = await wire.from_chat(body, edge(request, key))
    if image_request.stream:
        return sse_response(_chat_stream(app_state(request), image_request))
    delivery = await deliver(request, image_request, "chat")
    return OrjsonResponse(render.chat_completion(delivery))


async def _chat_stream(px: AppState, image_request: ImageRequest) -> AsyncIterator[bytes]:
    created = int(time.time())
    gen_id, model = image_request.id, image_request.model

    def chunk(**kwargs: object) -> bytes:
        return render.sse_data(render.chat_chunk(gen_id, model, created, **kwargs))  # type: ignore[arg-type]

    yield chunk(delta={"role": "assistant", "content": ""})
    yield render.sse_comment(KEEPALIVE)
    async for item in delivery_events(px, image_request, "chat"):
        if isinstance(item, Tick):
            if item.progress is not None:
                yield render.sse_comment(
                    f"PIXELROUTER PROGRESS {item.progress.step}/{item.progress.total_steps}"
                )
            else:
                yield render.sse_comment(KEEPALIVE)
        elif isinstance(item, PixelrouterError):
            yield chunk(delta={}, finish_reason="error", error=item)
            yield render.sse_data("[DONE]")
            return
        elif isinstance(item, Delivery):
            model = item.result.model
            provider = item.result.provider_name
            images = [
                {"type": "image_url", "image_url": {"url": render.data_url(im)}, "index": i}
                for i, im in enumerate(item.result.images)
            ]
            yield chunk(
                delta={"role": "assistant", "content": "", "images": images}, provider=provider
            )
            yield chunk(delta={}, finish_reason="stop", provider=provider)
            yield chunk(no_choices=True, usage_block=render.usage(item), provider=provider)
    yield render.sse_data("[DONE]")
