"""The catalogue: `/models`, a model's `/endpoints` (with live statistics), and the Image API's
model listing."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from pixelrouter.catalog import (
    ASPECT_RATIOS,
    TIERS,
    ModelEntry,
    Price,
    micro_to_usd,
    per_token_price_string,
)
from pixelrouter.providers.base import Provider
from pixelrouter.routing.health import CircuitState
from pixelrouter.stats import ProviderStats, endpoint_status, providers_stats
from pixelrouter.store import utcnow

from ..model_query import NEEDS_FIGURES, ModelFigures, ModelQuery, matches, model_query, sort_models
from ..responses import OrjsonResponse
from ..schemas import (
    ImageModelEndpoints,
    ImageModelsList,
    ModelEndpoints,
    ModelResponse,
    ModelsCount,
    ModelsList,
    ProvidersList,
)
from ..state import AppState, app_state
from .openapi import BEARER, READ_ERRORS, errors, ok

log = logging.getLogger(__name__)

router = APIRouter(tags=["catalogue"], dependencies=BEARER, responses=errors(*READ_ERRORS))

NO_TOOL_CHOICE = {"auto": False, "function": False, "none": False, "required": False}
STATS_FIELDS = (
    "uptime_last_5m",
    "uptime_last_30m",
    "uptime_last_1d",
    "latency_last_30m",
    "throughput_last_30m",
)
NO_FIGURES: dict[str, Any] = {
    **dict.fromkeys(STATS_FIELDS),
    "perf_last_30m_by_workload": {
        "image_generation": {"latency": None, "request_count": 0, "throughput": None}
    },
}


def token_pricing(price: Price) -> dict[str, str]:
    """SPEC §1: USD per token at 4096 image tokens per megapixel."""
    return {
        "prompt": per_token_price_string(price.extra_mp),
        "completion": per_token_price_string(price.extra_mp),
        "image_output": per_token_price_string(price.first_mp),
        "request": "0",
        "image": per_token_price_string(price.input_mp) if price.input_mp else "0",
    }


def megapixel_pricing(price: Price) -> list[dict[str, Any]]:
    return [
        {"billable": "output_image", "unit": "megapixel", "cost_usd": micro_to_usd(price.first_mp)},
        {
            "billable": "output_image",
            "unit": "megapixel",
            "cost_usd": micro_to_usd(price.extra_mp),
            "variant": "additional",
        },
    ]


def architecture(entry: ModelEntry) -> dict[str, Any]:
    return {
        "modality": entry.modality,
        "input_modalities": list(entry.input_modalities),
        "output_modalities": list(entry.output_modalities),
        "tokenizer": entry.tokenizer,
        "instruct_type": None,
    }


def endpoints_url(entry: ModelEntry, images_api: bool = False) -> str:
    prefix = "/api/v1/images/models" if images_api else "/api/v1/models"
    return f"{prefix}/{entry.id}/endpoints"


def model_json(entry: ModelEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "canonical_slug": entry.canonical_slug,
        "hugging_face_id": entry.hf_id,
        "name": entry.name,
        "created": entry.created,
        "description": entry.description,
        "context_length": entry.context_length,
        "architecture": architecture(entry),
        "pricing": token_pricing(entry.price),
        "top_provider": {
            "context_length": entry.context_length,
            "max_completion_tokens": None,
            "is_moderated": False,
        },
        "per_request_limits": None,
        "supported_parameters": list(entry.supported_parameters),
        "default_parameters": {"steps": entry.default_steps, "guidance": entry.default_guidance},
        "supported_voices": None,
        "links": {"details": endpoints_url(entry)},
        # What the OpenAI SDK's `Model` reads (`models.list` / `models.retrieve`).
        "object": "model",
        "owned_by": entry.author,
    }


def live_status(px: AppState, provider: Provider, stats: ProviderStats | None) -> int:
    """SPEC §3.4 `status` from readiness, the circuit breaker and the statistics."""
    ready, _ = provider.readiness()
    circuit = px.router.health.of(provider.info.slug).state()
    return endpoint_status(
        stats,
        ready=ready,
        circuit_open=circuit is CircuitState.OPEN,
        circuit_half_open=circuit is CircuitState.HALF_OPEN,
    )


async def endpoint_stats(px: AppState, entry: ModelEntry) -> dict[str, ProviderStats]:
    """Each provider's statistics for this model, read in a thread. The catalogue still
    answers, with null figures, when the store cannot be read."""
    slugs = [p.info.slug for p in px.router.serves(entry.id)]
    now = utcnow()
    try:
        return await asyncio.to_thread(providers_stats, px.store, slugs, now, model=entry.id)
    except Exception:
        log.exception("could not read the statistics of %s", entry.id)
        return {}


def endpoint_json(
    entry: ModelEntry, provider: Provider, stats: ProviderStats | None, status: int
) -> dict[str, Any]:
    info = provider.info
    figures = stats.json() if stats is not None else NO_FIGURES
    return {
        "name": f"{info.display_name} | {entry.id}",
        "model_id": entry.id,
        "model_name": entry.name,
        "provider_name": info.display_name,
        "tag": info.slug,
        "context_length": entry.context_length,
        "max_completion_tokens": None,
        "max_prompt_tokens": None,
        "pricing": token_pricing(info.price),
        "quantization": info.quantization,
        "service_tier": None,
        "status": status,
        "supported_parameters": list(info.supported_parameters or entry.supported_parameters),
        "supports_implicit_caching": False,
        "supports_tool_choice": NO_TOOL_CHOICE,
        "supports_diarization": False,
        "supports_image_reference": True,
        "native_tools": {},
        **figures,
    }


def capability_descriptors(entry: ModelEntry) -> dict[str, dict[str, Any]]:
    return {
        "n": {"type": "range", "min": 1, "max": entry.max_images_per_request},
        "seed": {"type": "range", "min": 0, "max": 2**53},
        "size": {"type": "enum", "values": list(TIERS)},
        "resolution": {"type": "enum", "values": list(TIERS)},
        "aspect_ratio": {"type": "enum", "values": [*ASPECT_RATIOS, "auto"]},
        "output_format": {"type": "enum", "values": ["png", "jpeg", "webp"]},
        "output_compression": {"type": "range", "min": 0, "max": 100},
        "background": {"type": "enum", "values": ["auto", "opaque"]},
        "input_references": {"type": "range", "min": 0, "max": entry.max_reference_images},
    }


async def _query_models(px: AppState, query: ModelQuery) -> list[ModelEntry]:
    now = utcnow()
    entries = [
        entry
        for entry in px.catalog.models
        if matches(entry, query, [p.info for p in px.router.serves(entry.id)], now)
    ]
    figures: dict[str, ModelFigures] = {}
    if (query.sort or "").strip().lower() in NEEDS_FIGURES and entries:
        figures = await asyncio.to_thread(_model_figures, px, entries)
    return sort_models(entries, query.sort, figures)


def _model_figures(px: AppState, entries: list[ModelEntry]) -> dict[str, ModelFigures]:
    """Per model: requests in the last 7 days, and its best provider's p50 latency (ms) and
    throughput over 30 minutes, for the usage and speed sorts."""
    now = utcnow()
    requests: dict[str, int] = {}
    for row in px.store.activity(since=now.date() - timedelta(days=6)):
        requests[row.model] = requests.get(row.model, 0) + row.requests
    figures = {}
    for entry in entries:
        slugs = [p.info.slug for p in px.router.serves(entry.id)]
        stats = providers_stats(px.store, slugs, now, model=entry.id)
        latencies = [s.latency_last_30m["p50"] for s in stats.values() if s.latency_last_30m]
        speeds = [s.throughput_last_30m["p50"] for s in stats.values() if s.throughput_last_30m]
        figures[entry.id] = ModelFigures(
            requests_last_week=requests.get(entry.id, 0),
            latency_ms_p50=min(latencies, default=None),
            throughput_p50=max(speeds, default=None),
        )
    return figures


@router.get("/models", summary="List models", responses=ok(ModelsList))
async def list_models(
    request: Request,
    query: ModelQuery = Depends(model_query),
    offset: int = Query(default=0, ge=0),
    limit: int | None = Query(default=None, ge=1),
) -> OrjsonResponse:
    """Every filter the current OpenRouter SDKs send is applied (docs/api-decisions.md);
    without `output_modalities`, every model is listed."""
    px = app_state(request)
    models = await _query_models(px, query)
    end = len(models) if limit is None else min(len(models), offset + limit)
    # The official SDK's `ModelsListResponse` requires `links` and `total_count` (it pages
    # with `offset` and `limit`).
    next_url = str(request.url.include_query_params(offset=end)) if end < len(models) else None
    return OrjsonResponse(
        {
            "data": [model_json(m) for m in models[offset:end]],
            "links": {"next": next_url},
            "total_count": len(models),
        }
    )


@router.get("/models/user", summary="List models for this key", responses=ok(ModelsList))
async def list_models_for_user(
    request: Request,
    query: ModelQuery = Depends(model_query),
    offset: int = Query(default=0, ge=0),
    limit: int | None = Query(default=None, ge=1),
) -> OrjsonResponse:
    """OpenRouter's list filtered by the account's provider preferences; a key here has none,
    so it is `/models` (the SDK's `models.list_for_user`, LiteLLM's model check)."""
    return await list_models(request, query, offset, limit)


@router.get("/models/count", summary="Count models", responses=ok(ModelsCount))
async def count_models(
    request: Request, query: ModelQuery = Depends(model_query)
) -> OrjsonResponse:
    """The number of models `/models` lists for the same filters."""
    px = app_state(request)
    models = await _query_models(px, query)
    return OrjsonResponse({"data": {"count": len(models)}})


@router.get("/model/{author}/{slug}", summary="Get a model", responses=ok(ModelResponse))
async def get_model(author: str, slug: str, request: Request) -> OrjsonResponse:
    """One model by id, its Hugging Face id or its canonical slug (aliases resolve to it)."""
    entry = app_state(request).catalog.get(f"{author}/{slug}")
    return OrjsonResponse({"data": model_json(entry)})


@router.get(
    "/models/{author}/{slug}",
    summary="Get a model (OpenAI's models.retrieve)",
    responses=ok(ModelResponse),
)
async def retrieve_model(author: str, slug: str, request: Request) -> OrjsonResponse:
    """The OpenAI SDK's `models.retrieve(id)`: the model object itself, not wrapped in `data`
    (the SDK sends the id's slash as %2F, which arrives decoded)."""
    entry = app_state(request).catalog.get(f"{author}/{slug}")
    return OrjsonResponse(model_json(entry))


@router.get("/providers", summary="List providers", responses=ok(ProvidersList))
async def list_providers(request: Request) -> OrjsonResponse:
    """The providers this server routes to, in OpenRouter's shape."""
    px = app_state(request)
    return OrjsonResponse(
        {
            "data": [
                {
                    "name": p.info.display_name,
                    "slug": p.info.slug,
                    "privacy_policy_url": None,
                    "terms_of_service_url": None,
                    "status_page_url": None,
                    "headquarters": None,
                    "datacenters": None,
                }
                for p in px.router.providers
            ]
        }
    )


@router.get(
    "/models/{author}/{slug}/endpoints",
    summary="List a model's endpoints",
    responses=ok(ModelEndpoints),
)
async def list_endpoints(author: str, slug: str, request: Request) -> OrjsonResponse:
    px = app_state(request)
    entry = px.catalog.get(f"{author}/{slug}")
    stats = await endpoint_stats(px, entry)
    endpoints = []
    for provider in px.router.serves(entry.id):
        figures = stats.get(provider.info.slug)
        endpoints.append(
            endpoint_json(entry, provider, figures, live_status(px, provider, figures))
        )
    return OrjsonResponse(
        {
            "data": {
                "id": entry.id,
                "name": entry.name,
                "created": entry.created,
                "description": entry.description,
                "architecture": architecture(entry),
                "endpoints": endpoints,
            }
        }
    )


def image_model_json(entry: ModelEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "canonical_slug": entry.canonical_slug,
        "name": entry.name,
        "created": entry.created,
        "description": entry.description,
        "architecture": {
            "input_modalities": list(entry.input_modalities),
            "output_modalities": list(entry.output_modalities),
        },
        "endpoints": endpoints_url(entry, images_api=True),
        "pricing": megapixel_pricing(entry.price),
        "supported_parameters": capability_descriptors(entry),
        "supports_streaming": True,
    }


@router.get(
    "/images/models", summary="List image models (Image API)", responses=ok(ImageModelsList)
)
async def list_image_models(request: Request) -> OrjsonResponse:
    px = app_state(request)
    models = [m for m in px.catalog.models if "image" in m.output_modalities]
    return OrjsonResponse({"data": [image_model_json(m) for m in models]})


@router.get(
    "/images/models/{author}/{slug}/endpoints",
    summary="List an image model's endpoints",
    responses=ok(ImageModelEndpoints),
)
async def list_image_endpoints(author: str, slug: str, request: Request) -> OrjsonResponse:
    px = app_state(request)
    entry = px.catalog.get(f"{author}/{slug}")
    stats = await endpoint_stats(px, entry)
    endpoints = [
        {
            "provider_name": p.info.display_name,
            "provider_slug": p.info.slug,
            "provider_tag": p.info.slug,
            "status": live_status(px, p, stats.get(p.info.slug)),
            "pricing": megapixel_pricing(p.info.price),
            "supported_parameters": capability_descriptors(entry),
            "supports_streaming": True,
            "allowed_passthrough_parameters": ["steps", "guidance", "batching"],
        }
        for p in px.router.serves(entry.id)
    ]
    return OrjsonResponse({"id": entry.id, "name": entry.name, "endpoints": endpoints})
