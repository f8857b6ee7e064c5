"""A batch item's body in, its result body out: the same translation and the same answer as
the single endpoint it names (`endpoint`), with images as URLs into the image store.

The bodies are checked against the endpoint's schema when the batch is submitted (a body that
fails is a failed item from the start, not a refused batch); the rest of the translation
(sizes, adapters, reference images) runs when the item runs, as a request's would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from pixelrouter.billing.costs import Delivery
from pixelrouter.errors import InvalidRequest, PixelrouterError
from pixelrouter.store import GenerationApi
from pixelrouter.types import ImageRequest

from .. import render, wire
from ..schemas import ChatCompletionRequest, ImagesRequest, OpenAIImagesRequest

# The endpoints a batch may name (as the OpenRouter SDK writes them, with or without `/api`),
# as the API a generation record names and the schema of their bodies.
ENDPOINTS: dict[str, tuple[GenerationApi, type[BaseModel]]] = {
    "/v1/chat/completions": ("chat", ChatCompletionRequest),
    "/v1/images": ("images", ImagesRequest),
    "/v1/images/generations": ("openai_images", OpenAIImagesRequest),
}
# Stands for a stored image in a stored result body; a signed URL replaces it when read.
FILE_REF = "pixelrouter-file:"


def endpoint_of(text: str) -> str:
    """The canonical form of a batch's `endpoint`; a 400 naming the ones served."""
    path = text.strip()
    if path.startswith("/api/"):
        path = path[len("/api") :]
    if path in ENDPOINTS:
        return path
    raise InvalidRequest(
        f"endpoint {text!r} is not served here; a batch may name "
        f"{', '.join(sorted(ENDPOINTS))} (this server makes images).",
        metadata={"param": "endpoint"},
    )


def check_body(endpoint: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body as it will run: the batch's `model` unless the body names one, never
    streamed; a 400 (`InvalidRequest`) when the single endpoint would refuse its shape."""
    body = dict(body)
    body.setdefault("model", model)
    if body.get("stream"):
        raise InvalidRequest("stream is not available in a batch: results are collected.")
    _, schema = ENDPOINTS[endpoint]
    try:
        schema.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from None
    return body


def _describe(exc: ValidationError) -> str:
    parts = []
    for item in exc.errors()[:3]:
        location = ".".join(str(p) for p in item.get("loc", ()))
        if item.get("type") == "missing":
            parts.append(f"{location} is required")
        else:
            message = str(item.get("msg", "is invalid"))
            parts.append(f"{location}: {message}" if location else message)
    return "Invalid request: " + "; ".join(parts) + "."


async def translate(endpoint: str, body: dict[str, Any], edge: wire.Edge) -> ImageRequest:
    """The body as the one internal request type, run at batch priority and price."""
    _, schema = ENDPOINTS[endpoint]
    try:
        parsed = schema.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from None
    if isinstance(parsed, ChatCompletionRequest):
        request = await wire.from_chat(parsed, edge)
    elif isinstance(parsed, ImagesRequest):
        request = await wire.from_images(parsed, edge)
    else:
        assert isinstance(parsed, OpenAIImagesRequest)
        request = wire.from_openai(parsed, edge)
    return dataclasses.replace(request, stream=False, priority="batch", in_batch=True)


def result_body(endpoint: str, delivery: Delivery, keys: list[str]) -> dict[str, Any]:
    """What the single endpoint answers, each image standing as a reference to its stored
    file (`signed_body` turns them into URLs when the result is read)."""
    refs = [FILE_REF + key for key in keys]
    if endpoint == "/v1/chat/completions":
        return render.chat_completion(delivery, refs)
    if endpoint == "/v1/images":
        return render.images_response(delivery, refs)
    return render.openai_images_response(delivery, refs)


def signed_body(value: Any, sign: Any) -> Any:
    """A stored result body with every stored-file reference replaced by `sign(key)`."""
    if isinstance(value, str):
        return sign(value[len(FILE_REF) :]) if value.startswith(FILE_REF) else value
    if isinstance(value, list):
        return [signed_body(item, sign) for item in value]
    if isinstance(value, dict):
        return {key: signed_body(item, sign) for key, item in value.items()}
    return value


def file_refs(value: Any) -> Iterable[str]:
    """The stored-file keys a result body refers to."""
    if isinstance(value, str) and value.startswith(FILE_REF):
        yield value[len(FILE_REF) :]
    elif isinstance(value, list):
        for item in value:
            yield from file_refs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from file_refs(item)


def error_result(error: PixelrouterError) -> dict[str, Any]:
    """A failed item's `error`, in the SDK's `ResultError` shape."""
    return {
        "message": error.message,
        "param": error.metadata.get("param"),
        "type": error.error_type,
        "error_type": error.error_type,
    }
