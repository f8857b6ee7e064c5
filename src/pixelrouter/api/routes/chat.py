"""`POST /api/v1/chat/completions`: image output through the chat API, plain and SSE."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

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
from ..schemas import ChatCompletion, ChatCompletionRequest
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

router = APIRouter(tags=["chat"], dependencies=BEARER, responses=errors(*GENERATION_ERRORS))


@router.post(
    "/chat/completions",
    summary="Create a chat completion with image output",
    responses=ok(ChatCompletion, stream=True, links=GENERATION_LINKS),
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    key: KeyRecord = Depends(inference_key),
) -> Response:
    references = len(wire.chat_prompt_and_references(body)[1]) if body.messages else 0
    await app_state(request).service.check_credit(key, body.model, body.n, references=references)
    image_request = await wire.from_chat(body, edge(request, key))
    if image_request.stream:
        px = app_state(request)
        admission = await admit_stream(request, image_request, "chat")
        return sse_response(px, admission, _chat_stream(px, admission, handoff_of(request)))
    delivery = await deliver(request, image_request, "chat")
    return OrjsonResponse(with_router_metadata(request, render.chat_completion(delivery), delivery))


async def _chat_stream(
    px: AppState, admission: Admission, handoff: Handoff | None
) -> AsyncIterator[bytes]:
    image_request = admission.request
    created = int(time.time())
    gen_id, model = image_request.id, image_request.model

    def chunk(**kwargs: object) -> bytes:
        return render.sse_data(render.chat_chunk(gen_id, model, created, **kwargs))  # type: ignore[arg-type]

    yield chunk(delta={"role": "assistant", "content": ""})
    yield render.sse_comment(KEEPALIVE)
    async for item in delivery_events(px, admission):
        if isinstance(item, Tick):
            yield item.comment()
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
            delta = {"role": "assistant", "content": "", "images": images}
            yield image_chunk(handoff, chunk(delta=delta, provider=provider), len(images))
            yield chunk(delta={}, finish_reason="stop", provider=provider)
            yield chunk(no_choices=True, usage_block=render.usage(item), provider=provider)
    yield render.sse_data("[DONE]")
