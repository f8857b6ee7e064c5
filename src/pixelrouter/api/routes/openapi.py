"""What `/openapi.json` says about every operation beyond its parameters: the bearer key, the
error statuses (all in the SPEC §5 envelope), the success shapes, and links between
operations (a created key's hash, a generation's id)."""

from __future__ import annotations

from typing import Any

from fastapi import Security
from fastapi.security import HTTPBearer
from pydantic import BaseModel

from ..schemas import ErrorEnvelope

# Declares the scheme in the document; `auth.py` does the checking (auto_error=False: this
# dependency never answers a request itself).
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key, `sk-pr-v1-` and 64 hex digits: an inference key generates, "
    "a management key manages keys.",
)
BEARER = [Security(bearer)]

ERROR_DESCRIPTIONS = {
    400: "Invalid request (`invalid_request`, or an image error: `invalid_image`, "
    "`image_too_large`, `image_too_small`, `unsupported_image_format`)",
    401: "Missing, malformed, unknown, disabled or expired key",
    402: "The key's remaining credit cannot cover the request's maximum cost",
    403: "The wrong kind of key (a management key generating, an inference key managing)",
    404: "Unknown model, generation, key or path",
    408: "The request body did not arrive in time",
    409: "A name already taken, or a thing that cannot be changed this way (`metadata.reason`)",
    413: "The request body is larger than the server's limit",
    429: "Rate limited (see `Retry-After`)",
    502: "Every provider failed (`metadata.provider_errors`)",
    503: "No provider can serve the request now",
}
ANY_CLIENT_ERROR = "Any other client error (for example 405), in the same envelope"

GENERATION_ERRORS = (400, 401, 402, 403, 404, 408, 413, 429, 502, 503)
READ_ERRORS = (400, 401, 404)
MANAGEMENT_ERRORS = (400, 401, 403, 404, 408, 413)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The given error statuses, and `4XX` for the rest: every 4xx a request can meet (413
    and 408 from the body limits, 405 for a wrong method) is in the envelope."""
    described: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorEnvelope, "description": ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }
    described["4XX"] = {"model": ErrorEnvelope, "description": ANY_CLIENT_ERROR}
    return described


# One server-sent event as a client parses it: its `data` line(s), and `event` where named
# (OpenAI's image streams); keep-alive comments carry no event.
SSE_EVENT = {
    "type": "object",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


def ok(
    model: type[BaseModel],
    *,
    status: int = 200,
    stream: bool = False,
    links: dict[str, Any] | None = None,
) -> dict[int | str, dict[str, Any]]:
    response: dict[str, Any] = {"model": model}
    if stream:
        response["description"] = "JSON, or with `stream: true` server-sent events"
        response["content"] = {"text/event-stream": {"schema": SSE_EVENT}}
    if links:
        response["links"] = links
    return {status: response}


GENERATION_LINKS = {
    "GetGeneration": {
        "operationId": "getGeneration",
        "parameters": {"id": "$response.header.X-Generation-Id"},
        "description": "The record of the generation this response made",
    }
}
KEY_LINKS = {
    name: {"operationId": operation, "parameters": {"key_hash": "$response.body#/data/hash"}}
    for name, operation in (
        ("GetKey", "getKey"),
        ("UpdateKey", "updateKey"),
        ("DeleteKey", "deleteKey"),
    )
}
