"""The Batch API (docs/batches.md): `POST/GET /api/v1/batches`, `GET/DELETE
/api/v1/batches/{id}`, `POST /api/v1/batches/{id}/cancel`, and a key's webhook secret.

A batch belongs to the key that submitted it; a management key sees and manages every batch.
The runner (`api/batches/runner.py`) does the work; these routes only write and read rows.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from pixelrouter.errors import Conflict, InvalidRequest, NotFound, PixelrouterError
from pixelrouter.store import KeyRecord, utcnow
from pixelrouter.store.batch_records import TERMINAL_BATCH_STATES, NewBatch, NewBatchItem

from ..auth import current_key, inference_key
from ..batches import items as batch_items
from ..batches import webhooks
from ..batches.objects import batch_object, result_of
from ..responses import OrjsonResponse
from ..schemas.batches import (
    BatchDeleted,
    BatchList,
    BatchObject,
    BatchSubmitBody,
    WebhookSecret,
)
from ..state import AppState, app_state
from .openapi import BEARER, READ_ERRORS, errors, ok

router = APIRouter(tags=["batches"], dependencies=BEARER)

MAX_WINDOW = timedelta(hours=24)
_WINDOW = re.compile(r"^([1-9][0-9]{0,5})([smh])$")
_UNITS = {"s": 1, "m": 60, "h": 3600}
LIST_STATUSES = ("validating", "in_progress", "completed", "failed", "expired", "cancelled")


def completion_window(text: str | None) -> timedelta:
    """`24h` (the SDK's only value), or a shorter window: `2h`, `30m`, `90s`."""
    match = _WINDOW.match((text or "24h").strip())
    window = timedelta(seconds=int(match[1]) * _UNITS[match[2]]) if match else None
    if window is None or window > MAX_WINDOW:
        raise InvalidRequest(
            "completion_window must be 24h, or a shorter window such as 2h, 30m or 90s.",
            metadata={"param": "completion_window"},
        )
    return window


@router.post(
    "/batches",
    summary="Submit a batch of requests",
    status_code=202,
    responses={202: {"model": BatchObject}, **errors(400, 401, 403, 413, 429)},
)
async def create_batch(
    body: BatchSubmitBody, request: Request, key: KeyRecord = Depends(inference_key)
) -> OrjsonResponse:
    px = app_state(request)
    endpoint = batch_items.endpoint_of(body.endpoint)
    limit = px.settings.batch_max_requests
    if len(body.requests) > limit:
        raise InvalidRequest(
            f"A batch holds at most {limit} requests; this one has {len(body.requests)}. "
            "Split it into several batches.",
            metadata={"param": "requests"},
        )
    seen: set[str] = set()
    for item in body.requests:
        if item.custom_id in seen:
            raise InvalidRequest(
                f"custom_id {item.custom_id[:80]!r} appears twice; each request of a batch "
                "needs its own.",
                metadata={"param": "requests"},
            )
        seen.add(item.custom_id)
    window = completion_window(body.completion_window)
    if body.callback_url is not None:
        await asyncio.to_thread(
            webhooks.check_callback_url,
            body.callback_url,
            allow_private=px.settings.allow_private_image_urls,
        )
    try:
        px.catalog.get(body.model.split(":", 1)[0])
    except PixelrouterError as exc:
        raise InvalidRequest(exc.message, metadata={"param": "model"}) from None
    provider = body.provider.model_dump(exclude_none=True) if body.provider else None
    new_items = [_item(endpoint, body.model, provider, r.custom_id, r.body) for r in body.requests]
    now = utcnow()
    valid = sum(1 for item in new_items if item.error is None)
    batch = NewBatch(
        id="batch_" + secrets.token_hex(16),
        key_hash=key.hash,
        endpoint=body.endpoint,
        model=body.model,
        completion_window=body.completion_window or "24h",
        on_payment_required=body.on_payment_required or "continue",
        callback_url=body.callback_url,
        created_at=now,
        expires_at=now + window,
        error=None if valid else "No request of the batch is valid; see each result's error.",
    )
    await asyncio.to_thread(px.store.create_batch, batch, new_items)
    if px.batches is not None:
        px.batches.poke()
    row = await _owned(px, batch.id, key)
    return OrjsonResponse(await _batch_json(px, row, with_results=False), status_code=202)


def _item(
    endpoint: str, model: str, provider: dict[str, Any] | None, custom_id: str, body: Any
) -> NewBatchItem:
    """An item as stored: its body as it will run, or the error that refused it."""
    if not isinstance(body, dict):
        return NewBatchItem(custom_id, {}, _refused("body must be a JSON object."), 400)
    if provider and "provider" not in body:
        body = {**body, "provider": provider}
    try:
        return NewBatchItem(custom_id, batch_items.check_body(endpoint, model, body))
    except InvalidRequest as exc:
        return NewBatchItem(custom_id, body, batch_items.error_result(exc), exc.status)


def _refused(message: str) -> dict[str, Any]:
    return {"message": message, "param": None, "type": "invalid_request"}


@router.get(
    "/batches",
    summary="List batches, newest first",
    responses={**ok(BatchList), **errors(*READ_ERRORS)},
)
async def list_batches(
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    after: str | None = Query(None, max_length=64),
    status: list[str] | None = Query(None),
    created_after: str | None = Query(None, max_length=40),
    created_before: str | None = Query(None, max_length=40),
    key: KeyRecord = Depends(current_key),
) -> OrjsonResponse:
    px = app_state(request)
    for wanted in status or ():
        if wanted not in LIST_STATUSES:
            raise InvalidRequest(
                f"status must be one of {', '.join(LIST_STATUSES)}; got {wanted[:40]!r}."
            )
    rows = await asyncio.to_thread(
        px.store.list_batch_rows,
        key_hash=None if key.is_management else key.hash,
        limit=limit,
        after=after,
        statuses=status or (),
        created_after=_moment(created_after, "created_after"),
        created_before=_moment(created_before, "created_before"),
    )
    more = len(rows) > limit
    rows = rows[:limit]
    counts = await asyncio.to_thread(px.store.batch_item_counts, [row["id"] for row in rows])
    data = [batch_object(row, counts.get(row["id"], {})) for row in rows]
    return OrjsonResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


def _moment(text: str | None, name: str) -> datetime | None:
    """A timestamp as the SDK sends one: an ISO date or date-time, or Unix seconds."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text), UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest(f"{name} must be an ISO 8601 date or time, or Unix seconds.") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@router.get(
    "/batches/{batch_id}",
    summary="A batch, with the results of its finished requests",
    responses={**ok(BatchObject), **errors(*READ_ERRORS)},
)
async def get_batch(
    batch_id: str, request: Request, key: KeyRecord = Depends(current_key)
) -> OrjsonResponse:
    px = app_state(request)
    row = await _owned(px, batch_id, key)
    return OrjsonResponse(await _batch_json(px, row, with_results=True, request=request))


@router.post(
    "/batches/{batch_id}/cancel",
    summary="Cancel a batch: queued requests stop, running ones finish and are charged",
    responses={**ok(BatchObject), **errors(*READ_ERRORS, 409)},
)
async def cancel_batch(
    batch_id: str, request: Request, key: KeyRecord = Depends(current_key)
) -> OrjsonResponse:
    px = app_state(request)
    row = await _owned(px, batch_id, key)
    if row["status"] in TERMINAL_BATCH_STATES:
        raise Conflict(
            f"Batch {batch_id} has already ended ({row['status']}).",
            metadata={"reason": "batch_ended"},
        )
    await asyncio.to_thread(px.store.cancel_batch, batch_id)
    await asyncio.to_thread(px.store.finalize_batches, utcnow())
    row = await _owned(px, batch_id, key)  # its status changed
    return OrjsonResponse(await _batch_json(px, row, with_results=False))


@router.delete(
    "/batches/{batch_id}",
    summary="Delete an ended batch, its requests, results and stored images",
    responses={**ok(BatchDeleted), **errors(*READ_ERRORS, 409)},
)
async def delete_batch(
    batch_id: str, request: Request, key: KeyRecord = Depends(current_key)
) -> OrjsonResponse:
    px = app_state(request)
    row = await _owned(px, batch_id, key)
    if row["status"] not in TERMINAL_BATCH_STATES:
        raise Conflict(
            f"Batch {batch_id} is {row['status']}; cancel it first (POST "
            f"/api/v1/batches/{batch_id}/cancel), then delete it once it has ended.",
            metadata={"reason": "batch_in_progress"},
        )
    keys = await asyncio.to_thread(px.store.delete_batch, batch_id)
    for stored in keys:
        await px.images.delete(stored)
    return OrjsonResponse(
        {"id": batch_id, "object": "batch", "deletion": {"openrouter": "deleted"}}
    )


@router.get(
    "/key/webhook-secret",
    summary="The secret that verifies this key's batch webhooks",
    responses={**ok(WebhookSecret), **errors(401)},
)
async def webhook_secret(request: Request, key: KeyRecord = Depends(current_key)) -> OrjsonResponse:
    px = app_state(request)
    return OrjsonResponse({"secret": webhooks.key_secret(px.signing_secret, key.hash)})


async def _owned(px: AppState, batch_id: str, key: KeyRecord) -> dict[str, Any]:
    """The batch's row, if this key may see it (its own, or any for a management key)."""
    row = await asyncio.to_thread(px.store.batch_row, batch_id)
    if row is None or (not key.is_management and row["key_hash"] != key.hash):
        raise NotFound(f"No batch {batch_id[:80]!r} for this key.")
    return row


async def _batch_json(
    px: AppState, row: dict[str, Any], *, with_results: bool, request: Request | None = None
) -> dict[str, Any]:
    """The batch of `row` (as just read) with its counts, usage and, asked for, results."""
    store = px.store
    batch_id = row["id"]
    counts = (await asyncio.to_thread(store.batch_item_counts, [batch_id])).get(batch_id, {})
    usage = await asyncio.to_thread(store.batch_usage, batch_id)
    results = None
    if with_results:
        base = px.settings.public_url or (
            str(request.base_url).rstrip("/") if request is not None else ""
        )
        images = px.images

        def sign(stored: str) -> str:
            return base + images.signed_path(stored)[0]

        finished = await asyncio.to_thread(store.batch_item_rows, batch_id)
        results = [result_of(batch_id, item, sign) for item in finished]
    return batch_object(row, counts, usage=usage, results=results)
