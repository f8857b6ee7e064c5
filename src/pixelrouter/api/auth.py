"""Bearer-key authentication: which key is calling, and may it do this."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import Request

from pixelrouter.billing.keys import hash_key, looks_like_key
from pixelrouter.errors import Forbidden, Unauthorized
from pixelrouter.store import KeyRecord
from pixelrouter.types import Attribution

from .state import app_state


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "Missing API key: send 'Authorization: Bearer sk-pr-v1-...'.",
            error_type="authentication",
        )
    return token.strip()


async def current_key(request: Request) -> KeyRecord:
    cached = getattr(request.state, "api_key", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    token = _bearer(request)
    if not looks_like_key(token):
        raise Unauthorized(
            "Invalid API key format: keys look like 'sk-pr-v1-' followed by 64 hex digits.",
            error_type="authentication",
        )
    store = app_state(request).store
    # Looked up by SHA-256: equal hashes mean equal keys, and no plaintext is compared.
    record = await asyncio.to_thread(store.find_key, hash_key(token))
    if record is None:
        raise Unauthorized("Invalid API key.", error_type="authentication")
    if record.disabled:
        raise Unauthorized("This API key is disabled.", error_type="authentication")
    if record.is_expired(datetime.now(UTC)):
        raise Unauthorized("This API key has expired.", error_type="authentication")
    request.state.api_key = record
    return record


async def inference_key(request: Request) -> KeyRecord:
    record = await current_key(request)
    if record.is_management:
        raise Forbidden(
            "Management keys cannot generate images: use an inference key "
            "(create one with POST /api/v1/keys).",
            error_type="permission_denied",
        )
    return record


async def management_key(request: Request) -> KeyRecord:
    record = await current_key(request)
    if not record.is_management:
        raise Forbidden(
            "This endpoint needs a management key; inference keys cannot manage keys.",
            error_type="permission_denied",
        )
    return record


def attribution(request: Request) -> Attribution:
    headers = request.headers
    referer = headers.get("http-referer") or headers.get("referer")
    title = headers.get("x-openrouter-title") or headers.get("x-title")
    categories = headers.get("x-openrouter-categories", "")
    return Attribution(
        referer=referer[:512] if referer else None,
        title=title[:256] if title else None,
        categories=tuple(c.strip()[:64] for c in categories.split(",") if c.strip())[:10],
    )
