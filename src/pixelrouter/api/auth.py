"""Bearer-key authentication: which key is calling, and may it do this."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import Request
from starlette.types import Scope

from pixelrouter.errors import Forbidden, PixelrouterError, RateLimited, Unauthorized
from pixelrouter.keys import hash_key, looks_like_key
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
    """The calling key. What it reads next includes every generation already answered to it
    (to any key, for a management key): their bookkeeping, written just after the answer,
    is waited for."""
    cached = getattr(request.state, "api_key", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    record = await _lookup(request)
    await app_state(request).service.closed(None if record.is_management else record.hash)
    return record


async def _lookup(request: Request) -> KeyRecord:
    record = getattr(request.state, "edge_key", None) or await _find_key(request)
    request.state.api_key = record
    return record  # type: ignore[no-any-return]


async def _find_key(request: Request) -> KeyRecord:
    """The usable key the request's `Authorization` header names, or a 401."""
    token = _bearer(request)
    if not looks_like_key(token):
        raise Unauthorized(
            "Invalid API key format: keys look like 'sk-pr-v1-' followed by 64 hex digits.",
            error_type="authentication",
        )
    px = app_state(request)
    # Looked up by SHA-256: equal hashes mean equal keys, and no plaintext is compared.
    key_hash = hash_key(token)
    record = px.recent_keys.get(key_hash)
    if record is None:
        record = await asyncio.to_thread(px.store.find_key, key_hash)
        if record is not None:
            px.recent_keys.put(record)
    if record is None:
        raise Unauthorized("Invalid API key.", error_type="authentication")
    if record.disabled:
        raise Unauthorized("This API key is disabled.", error_type="authentication")
    if record.is_expired(datetime.now(UTC)):
        raise Unauthorized("This API key has expired.", error_type="authentication")
    return record


async def key_before_body(scope: Scope) -> PixelrouterError | None:
    """For `EdgeMiddleware`: the key of a request that carries a body, checked from its
    headers before a byte of the body is read, so a caller without a valid key makes the
    server read, hold and parse nothing. The record is kept for the route."""
    if not str(scope.get("path", "")).startswith("/api/v1/"):
        return None
    request = Request(scope)
    try:
        request.state.edge_key = await _find_key(request)
    except PixelrouterError as error:
        return error
    return None


async def inference_key(request: Request) -> KeyRecord:
    """A key that may generate, within its rate limit (SPEC §7), counted across processes.

    With a spending limit, the key's answered generations are settled first, so their
    reservations (held at the maximum cost until then) do not refuse this one."""
    record = getattr(request.state, "api_key", None) or await _lookup(request)
    if record.limit_micro is not None:
        await app_state(request).service.closed(record.hash)
    if record.is_management:
        raise Forbidden(
            "Management keys cannot generate images: use an inference key "
            "(create one with POST /api/v1/keys).",
            error_type="permission_denied",
        )
    px = app_state(request)
    limit = record.rate_limit_requests or px.settings.rate_limit_requests
    if limit:
        interval = record.rate_limit_interval_s or px.settings.rate_limit_interval_s
        retry_after = await asyncio.to_thread(
            px.store.hit_rate_limit, record.hash, requests=limit, interval_s=interval
        )
        if retry_after is not None:
            raise RateLimited(
                f"This key may make {limit} generation requests per {interval} s; "
                f"retry in {retry_after} s.",
                retry_after_s=retry_after,
                metadata={"limit": limit, "interval_s": interval},
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
    session = headers.get("x-session-id")
    return Attribution(
        referer=referer[:512] if referer else None,
        title=title[:256] if title else None,
        categories=tuple(c.strip()[:64] for c in categories.split(",") if c.strip())[:10],
        # checked against SPEC's bound with the body's, in `wire.py`
        session_id=session if session else None,
    )
