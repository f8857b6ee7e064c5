"""`GET /api/v1/generation`: one generation's record, for its owner or a management key."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from pixelrouter.catalog import micro_to_usd
from pixelrouter.errors import NotFound
from pixelrouter.store import GenerationRecord, KeyRecord

from ..auth import current_key
from ..responses import OrjsonResponse
from ..schemas import GenerationResponse
from ..state import app_state
from .openapi import BEARER, READ_ERRORS, errors, ok

router = APIRouter(tags=["generations"], dependencies=BEARER, responses=errors(*READ_ERRORS))


def generation_json(record: GenerationRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "model": record.model,
        "provider_name": record.provider_name,
        "total_cost": micro_to_usd(record.total_cost_micro),
        "usage": micro_to_usd(record.total_cost_micro),
        "created_at": record.created_at.isoformat(),
        "latency": record.latency_ms,
        "generation_time": record.generation_time_ms,
        "moderation_latency": None,
        "streamed": record.streamed,
        "cancelled": record.cancelled,
        "finish_reason": record.finish_reason,
        "native_finish_reason": record.finish_reason,
        "state": record.state,
        "tokens_prompt": record.tokens_prompt,
        "tokens_completion": record.tokens_completion,
        "native_tokens_prompt": record.tokens_prompt,
        "native_tokens_completion": record.tokens_completion,
        "native_tokens_completion_images": record.tokens_completion,
        "native_tokens_reasoning": 0,
        "native_tokens_cached": 0,
        "num_media_prompt": None,
        "num_media_completion": record.num_images,
        "num_search_results": None,
        "is_byok": False,
        "upstream_id": None,
        "origin": "",
        "app_id": None,
        "external_user": record.user,
        "user": record.user,
        "http_referer": record.http_referer,
        "app_title": record.app_title,
        "app_categories": list(record.app_categories),
        "api_type": "completions" if record.api == "chat" else "image",
        "api": record.api,
        "cache_discount": None,
        "data_region": "global",
        "num_fetches": None,
        "num_input_audio_prompt": None,
        "preset_id": None,
        "router": None,
        "service_tier": None,
        "upstream_inference_cost": None,
        "user_agent": None,
        "web_search_engine": None,
        "workspace_id": None,
        "width": record.width,
        "height": record.height,
        "n": record.n,
        "seed": record.seed,
        "ignored_parameters": list(record.ignored_parameters),
        "adjustments": list(record.adjustments),
        "loras": [{"name": r.get("name"), "scale": r.get("scale")} for r in record.loras],
        "session_id": record.session_id,
        "trace": record.trace,
        "metadata": record.metadata,
        "request_id": None,
        "error": (
            {"code": record.error_status, "message": record.error_message}
            if record.error_status
            else None
        ),
        "provider_responses": [
            {
                "provider_name": r.get("provider_name"),
                "status": r.get("status"),
                "latency": r.get("latency"),
            }
            for r in record.provider_responses
        ],
    }


@router.get(
    "/generation",
    summary="Get a generation's record",
    operation_id="getGeneration",
    responses=ok(GenerationResponse),
)
async def get_generation(
    request: Request,
    id: str = Query(min_length=1, max_length=200, description="The generation id, gen-..."),
    key: KeyRecord = Depends(current_key),
) -> OrjsonResponse:
    store = app_state(request).store
    record = await asyncio.to_thread(store.get_generation, id)
    # Another key's generation reads as unknown, so ids cannot be probed.
    if record is None or (not key.is_management and record.key_hash != key.hash):
        raise NotFound(f"Generation {id!r} not found.")
    return OrjsonResponse({"data": generation_json(record)})
