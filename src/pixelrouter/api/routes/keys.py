"""Keys and credits: `GET /key`, management `POST|GET /keys`, `GET|PATCH|DELETE /keys/{hash}`,
`GET /credits`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from pixelrouter.catalog import micro_to_usd, usd_to_micro
from pixelrouter.config import Settings
from pixelrouter.errors import InvalidRequest, LastManagementKey, NotFound
from pixelrouter.store import KeyBalance, KeyRecord, KeyUsage, Store

from ..auth import current_key, management_key
from ..responses import OrjsonResponse
from ..schemas import (
    ActivityList,
    CreateKeyRequest,
    Credits,
    CurrentKey,
    KeyCreated,
    KeyDeleted,
    KeyResponse,
    KeysList,
    UpdateKeyRequest,
)
from ..state import app_state
from .openapi import BEARER, KEY_LINKS, MANAGEMENT_ERRORS, errors, ok

router = APIRouter(tags=["keys"], dependencies=BEARER, responses=errors(*MANAGEMENT_ERRORS))


ACTIVITY_DAYS = 30


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


@dataclass(frozen=True)
class Spend:
    """What a key spent (settled, by window) and holds (open reservations)."""

    usage: KeyUsage
    balance: KeyBalance


def spend_of(store: Store, key_hash: str) -> Spend:
    return Spend(store.key_usage(key_hash), store.key_balance(key_hash))


def _usage_fields(record: KeyRecord, spend: Spend) -> dict[str, Any]:
    usage = spend.usage
    # What the key can still spend now: the limit less settled usage in this period and
    # open reservations of requests in flight.
    remaining = spend.balance.remaining(record.limit_micro)
    return {
        "limit": micro_to_usd(record.limit_micro) if record.limit_micro is not None else None,
        "limit_remaining": micro_to_usd(remaining) if remaining is not None else None,
        "limit_reset": record.limit_reset,
        "usage": micro_to_usd(usage.total),
        "usage_daily": micro_to_usd(usage.daily),
        "usage_weekly": micro_to_usd(usage.weekly),
        "usage_monthly": micro_to_usd(usage.monthly),
        "byok_usage": 0.0,
        "byok_usage_daily": 0.0,
        "byok_usage_weekly": 0.0,
        "byok_usage_monthly": 0.0,
        "include_byok_in_limit": False,
        "expires_at": _iso(record.expires_at),
    }


def key_json(record: KeyRecord, spend: Spend, settings: Settings) -> dict[str, Any]:
    """The SPEC §3.5 `Key`, with the fields OpenRouter's SDKs also read."""
    return {
        "hash": record.hash,
        "name": record.name,
        "label": record.label,
        "disabled": record.disabled,
        **_usage_fields(record, spend),
        "rate_limit": _rate_limit(record, settings),
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
        "last_used_at": None,
        "creator_user_id": None,
        "external_user": None,
        "workspace_id": "default",
        "is_management_key": record.is_management,
    }


def _rate_limit(record: KeyRecord, settings: Settings) -> dict[str, Any]:
    """The limit on generation requests this key meets: its own, else the server default."""
    requests = record.rate_limit_requests or settings.rate_limit_requests
    if not requests:
        return {"requests": -1, "interval": "60s", "note": "not rate limited"}
    interval = record.rate_limit_interval_s or settings.rate_limit_interval_s
    note = "this key's limit" if record.rate_limit_requests else "the server's default"
    return {"requests": requests, "interval": f"{interval}s", "note": note}


@router.get("/key", summary="The calling key's limits and usage", responses=ok(CurrentKey))
async def get_current_key(
    request: Request, key: KeyRecord = Depends(current_key)
) -> OrjsonResponse:
    store = app_state(request).store
    spend = await asyncio.to_thread(spend_of, store, key.hash)
    return OrjsonResponse(
        {
            "data": {
                "label": key.label,
                "name": key.name,
                **_usage_fields(key, spend),
                "is_management_key": key.is_management,
                "is_provisioning_key": key.is_management,
                "is_free_tier": False,
                "rate_limit": _rate_limit(key, app_state(request).settings),
                "allowed_data_regions": ["global"],
                "budgets": [],
                "effective_budget": None,
                "free_model_daily_requests": {"limit": 0, "remaining": 0, "used": 0},
                "creator_user_id": None,
                "organization_id": None,
                "workspace_id": None,
            }
        }
    )


def _parse_expiry(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(
            f"expires_at {text!r} is not an ISO 8601 date-time such as 2027-01-01T00:00:00Z."
        ) from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if value <= datetime.now(UTC):
        raise InvalidRequest("expires_at must be in the future.")
    return value


def _usd_to_micro(value: float | None) -> int | None:
    return None if value is None else usd_to_micro(value)


@router.post(
    "/keys",
    status_code=201,
    summary="Create an inference key (management)",
    responses=ok(KeyCreated, status=201, links=KEY_LINKS),
)
async def create_key(
    body: CreateKeyRequest, request: Request, _: KeyRecord = Depends(management_key)
) -> OrjsonResponse:
    store = app_state(request).store
    record, plaintext = await asyncio.to_thread(
        store.create_key,
        name=body.name,
        limit_micro=_usd_to_micro(body.limit),
        limit_reset=body.limit_reset,
        expires_at=_parse_expiry(body.expires_at),
        rate_limit_requests=body.rate_limit_requests,
        rate_limit_interval_s=body.rate_limit_interval_s,
    )
    spend = Spend(KeyUsage(), KeyBalance(period_used=0, reserved=0, total_used=0))
    return OrjsonResponse(
        {"data": key_json(record, spend, app_state(request).settings), "key": plaintext},
        status_code=201,
    )


@router.get("/keys", summary="List keys (management)", responses=ok(KeysList))
async def list_keys(
    request: Request,
    include_disabled: bool = True,
    include_expired: bool = False,
    offset: int = 0,
    _: KeyRecord = Depends(management_key),
) -> OrjsonResponse:
    """Every key, disabled ones included; expired ones only with `include_expired=true`, as
    OpenRouter lists them."""
    store = app_state(request).store
    settings = app_state(request).settings

    def collect() -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        records = [
            r
            for r in store.list_keys()
            if (include_disabled or not r.disabled) and (include_expired or not r.is_expired(now))
        ]
        return [key_json(r, spend_of(store, r.hash), settings) for r in records[max(0, offset) :]]

    return OrjsonResponse({"data": await asyncio.to_thread(collect)})


async def _find(request: Request, key_hash: str) -> KeyRecord:
    record = await asyncio.to_thread(app_state(request).store.find_key, key_hash)
    if record is None:
        raise NotFound(f"No key with hash {key_hash!r}.")
    return record


@router.get(
    "/keys/{key_hash}",
    summary="Get a key (management)",
    operation_id="getKey",
    responses=ok(KeyResponse),
)
async def get_key(
    key_hash: str, request: Request, _: KeyRecord = Depends(management_key)
) -> OrjsonResponse:
    record = await _find(request, key_hash)
    spend = await asyncio.to_thread(spend_of, app_state(request).store, record.hash)
    return OrjsonResponse({"data": key_json(record, spend, app_state(request).settings)})


@router.patch(
    "/keys/{key_hash}",
    summary="Update a key (management)",
    operation_id="updateKey",
    responses=ok(KeyResponse),
)
async def update_key(
    key_hash: str,
    body: UpdateKeyRequest,
    request: Request,
    _: KeyRecord = Depends(management_key),
) -> OrjsonResponse:
    await _find(request, key_hash)
    changes: dict[str, Any] = {}
    sent = body.model_fields_set
    if "name" in sent and body.name is not None:
        changes["name"] = body.name
    if "disabled" in sent and body.disabled is not None:
        changes["disabled"] = body.disabled
    if "limit" in sent:
        changes["limit_micro"] = _usd_to_micro(body.limit)
    if "limit_reset" in sent:
        changes["limit_reset"] = body.limit_reset
    if "expires_at" in sent:
        changes["expires_at"] = _parse_expiry(body.expires_at)
    for name in ("rate_limit_requests", "rate_limit_interval_s"):
        if name in sent:
            changes[name] = getattr(body, name)
    store = app_state(request).store
    try:
        record = await asyncio.to_thread(store.update_key, key_hash, **changes)
    except LastManagementKey as exc:
        raise InvalidRequest(str(exc), metadata={"reason": "last_management_key"}) from None
    app_state(request).recent_keys.forget(key_hash)
    if record is None:
        raise NotFound(f"No key with hash {key_hash!r}.")
    spend = await asyncio.to_thread(spend_of, store, record.hash)
    return OrjsonResponse({"data": key_json(record, spend, app_state(request).settings)})


@router.delete(
    "/keys/{key_hash}",
    summary="Delete a key (management)",
    operation_id="deleteKey",
    responses=ok(KeyDeleted),
)
async def delete_key(
    key_hash: str, request: Request, _: KeyRecord = Depends(management_key)
) -> OrjsonResponse:
    try:
        deleted = await asyncio.to_thread(app_state(request).store.delete_key, key_hash)
    except LastManagementKey as exc:
        raise InvalidRequest(str(exc), metadata={"reason": "last_management_key"}) from None
    app_state(request).recent_keys.forget(key_hash)
    if not deleted:
        raise NotFound(f"No key with hash {key_hash!r}.")
    return OrjsonResponse({"deleted": True, "data": {"success": True}})


@router.get("/credits", summary="Total credits and usage (management)", responses=ok(Credits))
async def get_credits(request: Request, _: KeyRecord = Depends(management_key)) -> OrjsonResponse:
    store = app_state(request).store

    def totals() -> tuple[int, int]:
        keys = store.list_keys()
        limits = sum(k.limit_micro or 0 for k in keys if not k.is_management)
        used = sum(store.key_usage(k.hash).total for k in keys)
        return limits, used

    limits, used = await asyncio.to_thread(totals)
    return OrjsonResponse(
        {"data": {"total_credits": micro_to_usd(limits), "total_usage": micro_to_usd(used)}}
    )


@router.get(
    "/activity",
    summary="Daily usage per model and provider (management)",
    responses=ok(ActivityList),
)
async def get_activity(
    request: Request,
    date_: str | None = Query(default=None, alias="date", description="One UTC day, YYYY-MM-DD"),
    api_key_hash: str | None = Query(default=None, description="Only this key's activity"),
    _: KeyRecord = Depends(management_key),
) -> OrjsonResponse:
    """SPEC §3.5: per day, model and provider; the last 30 completed UTC days (today, still
    running, left out, as OpenRouter does) unless `date` names one day (today included)."""
    if date_ is not None:
        try:
            since = until = date.fromisoformat(date_)
        except ValueError as exc:
            raise InvalidRequest(f"date {date_!r} is not a day such as 2026-11-25.") from exc
    else:
        until = datetime.now(UTC).date() - timedelta(days=1)
        since = until - timedelta(days=ACTIVITY_DAYS - 1)
    store = app_state(request).store
    rows = await asyncio.to_thread(store.activity, since=since, until=until, key_hash=api_key_hash)
    return OrjsonResponse(
        {
            "data": [
                {
                    "date": row.date.isoformat(),
                    "model": row.model,
                    "model_permaslug": row.model,
                    "endpoint_id": f"{row.provider_name}:{row.model}",
                    "provider_name": row.provider_name,
                    "requests": row.requests,
                    "images": row.images,
                    "megapixels": row.megapixels,
                    "prompt_tokens": row.prompt_tokens,
                    "completion_tokens": row.completion_tokens,
                    "reasoning_tokens": 0,
                    "cached_tokens": 0,
                    "usage": micro_to_usd(row.usage_micro),
                    "byok_usage_inference": 0.0,
                }
                for row in rows
            ]
        }
    )
