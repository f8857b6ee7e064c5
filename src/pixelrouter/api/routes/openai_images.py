"""OpenAI Images API: `POST /api/v1/images/generations` and `POST /api/v1/images/edits`."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from pixelrouter.billing.bookkeeping import Admission
from pixelrouter.billing.costs import Delivery
from pixelrouter.errors import InvalidRequest, PixelrouterError
from pixelrouter.sse import KEEPALIVE
from pixelrouter.store import KeyRecord
from pixelrouter.types import ImageRequest

from .. import render, wire
from ..auth import inference_key
from ..handoff import Handoff
from ..responses import OrjsonResponse
from ..schemas import OpenAIImagesRequest, OpenAIImagesResponse
from ..state import AppState, app_state
from ..streaming import Tick
from .common import (
    admit_stream,
    deliver,
    deliver_urls,
    delivery_events,
    edge,
    handoff_of,
    image_chunk,
    sse_response,
)
from .images import stream_error
from .openapi import BEARER, GENERATION_ERRORS, GENERATION_LINKS, errors, ok

router = APIRouter(
    tags=["openai-images"], dependencies=BEARER, responses=errors(*GENERATION_ERRORS)
)


@router.post(
    "/images/generations",
    summary="Create images (OpenAI Images API)",
    responses=ok(OpenAIImagesResponse, stream=True, links=GENERATION_LINKS),
)
async def create_generation(
    body: OpenAIImagesRequest,
    request: Request,
    key: KeyRecord = Depends(inference_key),
) -> Response:
    px = app_state(request)
    image_request = wire.from_openai(body, edge(request, key))
    return await _respond(request, px, image_request, as_urls=body.response_format == "url")


@router.post(
    "/images/edits",
    summary="Edit images (OpenAI Images API, multipart/form-data)",
    responses=ok(OpenAIImagesResponse, stream=True, links=GENERATION_LINKS),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["prompt", "image"],
                        "properties": {
                            "prompt": {"type": "string"},
                            "image": {"type": "string", "format": "binary"},
                            "model": {"type": "string"},
                            "n": {"type": "integer", "minimum": 1, "maximum": 4},
                            "size": {"type": "string"},
                            "response_format": {"type": "string", "enum": ["b64_json", "url"]},
                            "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
                            "seed": {"type": "integer"},
                            "loras": {
                                "type": "string",
                                "description": "LoRA adapters as one JSON array, "
                                '[{"name": "ink", "scale": 0.8}]; or the fields '
                                "loras[][name] and loras[][scale] the OpenAI SDK sends for "
                                "extra_body={'loras': [...]} (docs/loras.md)",
                            },
                        },
                    }
                }
            },
        }
    },
)
async def create_edit(request: Request, key: KeyRecord = Depends(inference_key)) -> Response:
    px = app_state(request)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest("images/edits takes multipart/form-data with image and prompt.")
    try:
        form = await request.form(max_files=8, max_fields=64)
    except PixelrouterError:
        raise
    except Exception as exc:
        raise InvalidRequest("The multipart body could not be parsed.") from exc
    uploads: list[bytes] = []
    fields: dict[str, Any] = {}
    lora_fields: dict[str, list[str]] = {LORA_NAMES: [], LORA_SCALES: []}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name in ("image", "image[]"):
                    uploads.append(await value.read())
                elif name == "mask":
                    fields.setdefault("mask", "uploaded")
                continue
            if name in lora_fields:
                lora_fields[name].append(value)
                continue
            fields[name] = value
    finally:
        await form.close()
    loras = _form_loras(
        fields.pop("loras", None), lora_fields[LORA_NAMES], lora_fields[LORA_SCALES]
    )
    if loras is not None:
        fields["loras"] = loras
    if not uploads:
        raise InvalidRequest("images/edits needs at least one 'image' file.")
    ignored_mask = fields.pop("mask", None) is not None
    for name in ("n", "seed", "output_compression", "partial_images"):
        if name in fields:
            fields[name] = _form_int(name, fields[name])
    if "stream" in fields:
        fields["stream"] = str(fields["stream"]).lower() in ("true", "1")
    try:
        body = OpenAIImagesRequest(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"Invalid request: {where}: {first['msg']}.") from exc
    the_edge = edge(request, key)
    entry = px.catalog.get(body.model) if body.model else px.catalog.default
    # Before any uploaded image is decoded.
    await px.service.check_credit(key, body.model, body.n, references=len(uploads))
    references = await wire.decode_uploads(uploads, entry)
    image_request = wire.from_openai(body, the_edge, references)
    if ignored_mask:
        import dataclasses

        image_request = dataclasses.replace(
            image_request, ignored_parameters=(*image_request.ignored_parameters, "mask")
        )
    return await _respond(
        request, px, image_request, edit=True, as_urls=body.response_format == "url"
    )


LORA_NAMES = "loras[][name]"  # what the OpenAI SDK makes of extra_body={"loras": [...]}
LORA_SCALES = "loras[][scale]"


def _form_loras(text: str | None, names: list[str], scales: list[str]) -> Any:
    """The edit's adapters from its form: one `loras` field holding the JSON array, or the
    `loras[][name]` / `loras[][scale]` fields the OpenAI SDK sends for a list in extra_body.
    The SDK groups those by field name, so the n-th scale belongs to the n-th name: a scale
    for every adapter or for none."""
    if text is not None:
        if names or scales:
            raise InvalidRequest(
                f"Send loras either as one JSON field or as {LORA_NAMES} fields, not both.",
                metadata={"param": "loras"},
            )
        try:
            return json.loads(text)
        except ValueError:
            raise InvalidRequest(
                'loras must be a JSON array such as [{"name": "ink", "scale": 0.8}]; '
                f"got {text[:80]!r}.",
                metadata={"param": "loras"},
            ) from None
    if not names and not scales:
        return None
    if scales and len(scales) != len(names):
        raise InvalidRequest(
            f"{len(names)} {LORA_NAMES} but {len(scales)} {LORA_SCALES} fields: multipart "
            "forms do not keep which scale goes with which name, so give every adapter a "
            "scale or none, or send loras as one JSON field.",
            metadata={"param": "loras"},
        )
    return [
        {"name": name, **({"scale": _form_number(scales[i])} if scales else {})}
        for i, name in enumerate(names)
    ]


def _form_number(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value  # refused by the adapter checks, which quote it


def _form_int(name: str, value: Any) -> int:
    try:
        return int(str(value))
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be an integer; got {value!r}.") from exc


async def _respond(
    request: Request,
    px: AppState,
    image_request: ImageRequest,
    *,
    edit: bool = False,
    as_urls: bool = False,
) -> Response:
    if image_request.stream:
        admission = await admit_stream(request, image_request, "openai_images")
        stream = _openai_stream(px, admission, handoff_of(request), edit=edit)
        return sse_response(px, admission, stream)
    if as_urls:
        delivery, urls = await deliver_urls(request, image_request, "openai_images")
        return OrjsonResponse(render.openai_images_response(delivery, urls))
    delivery = await deliver(request, image_request, "openai_images")
    return OrjsonResponse(render.openai_images_response(delivery))


async def _openai_stream(
    px: AppState, admission: Admission, handoff: Handoff | None, *, edit: bool
) -> AsyncIterator[bytes]:
    """OpenAI's image stream events: `image_generation.completed`, or `image_edit.completed`
    for edits, as the OpenAI SDK types them; then `[DONE]` as the other streams end."""
    image_request = admission.request
    completed = "image_edit.completed" if edit else "image_generation.completed"
    yield render.sse_comment(KEEPALIVE)
    async for item in delivery_events(px, admission):
        if isinstance(item, Tick):
            yield item.comment()
        elif isinstance(item, PixelrouterError):
            yield b"event: error\n" + render.sse_data(stream_error(item))
        elif isinstance(item, Delivery):
            created = int(time.time())
            for index, image in enumerate(item.result.images):
                event = {
                    "type": completed,
                    "b64_json": render.b64(image),
                    "created_at": created,
                    "size": f"{image.width}x{image.height}",
                    "quality": "auto",
                    "background": "opaque",
                    "output_format": image_request.output_format,
                    # Its own image's usage: the events add up to the request's.
                    "usage": render.openai_usage_of_image(item, index),
                }
                data = f"event: {completed}\n".encode() + render.sse_data(event)
                yield image_chunk(handoff, data, 1)
    yield render.sse_data("[DONE]")
