"""The catalogue: `/models`, a model's `/endpoints` (with live statistics), and the Image API's
model listing."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from fastapi import APIRouter, Depends, Query, Request

from pixelrouter.catalog import ModelEntry
from pixelrouter.catalog_json import (
    endpoint_json,
    image_endpoint_json,
    image_model_json,
    live_status,
    model_endpoints_json,
    model_json,
    provider_json,
)
from pixelrouter.stats import ProviderStats, providers_stats
from pixelrouter.store import utcnow

from ..model_query import NEEDS_FIGURES, ModelFigures, ModelQuery, matches, model_query, sort_models
from ..responses import OrjsonResponse
from ..schemas import (
    ImageModelEndpoints,
    ImageModelsList,
    LorasList,
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


def with_variants(px: AppState, models: list[ModelEntry]) -> list[ModelEntry]:
    """Each catalogue model followed by its variants, one per accepted LoRA adapter."""
    return [m for entry in models for m in (entry, *px.settings.loras.variants(entry))]


def _model(px: AppState, model_id: str) -> ModelEntry:
    """A catalogue model, or one of its listed variants (`<model id>:<adapter>`)."""
    base, sep, name = model_id.rpartition(":")
    if sep and "/" in base:
        entry = px.catalog.get(base)
        for variant in px.settings.loras.variants(entry):
            if variant.id.lower() == f"{entry.id}:{name}".lower():
                return variant
    return px.catalog.get(model_id)


async def _query_models(px: AppState, query: ModelQuery) -> list[ModelEntry]:
    now = utcnow()
    entries = [
        entry
        for entry in with_variants(px, list(px.catalog.models))
        if matches(entry, query, [p.info for p in px.router.serves(entry.base_id or entry.id)], now)
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
            "data": [model_json(m, px.settings.batch_discount_ppm) for m in models[offset:end]],
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
    px = app_state(request)
    entry = _model(px, f"{author}/{slug}")
    return OrjsonResponse({"data": model_json(entry, px.settings.batch_discount_ppm)})


@router.get(
    "/models/{author}/{slug}",
    summary="Get a model (OpenAI's models.retrieve)",
    responses=ok(ModelResponse),
)
async def retrieve_model(author: str, slug: str, request: Request) -> OrjsonResponse:
    """The OpenAI SDK's `models.retrieve(id)`: the model object itself, not wrapped in `data`
    (the SDK sends the id's slash as %2F, which arrives decoded)."""
    px = app_state(request)
    entry = _model(px, f"{author}/{slug}")
    return OrjsonResponse(model_json(entry, px.settings.batch_discount_ppm))


@router.get("/loras", summary="List LoRA adapters", responses=ok(LorasList))
async def list_loras(request: Request) -> OrjsonResponse:
    """The registered LoRA adapters (docs/loras.md), with what checking each one found: those
    `ready` may be named in a request's `loras` or as a model variant `<model>:<name>`."""
    return OrjsonResponse({"data": app_state(request).settings.loras.describe()})


@router.get("/providers", summary="List providers", responses=ok(ProvidersList))
async def list_providers(request: Request) -> OrjsonResponse:
    """The providers this server routes to, in OpenRouter's shape."""
    px = app_state(request)
    return OrjsonResponse({"data": [provider_json(p) for p in px.router.providers]})


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
            endpoint_json(
                entry,
                provider,
                figures,
                live_status(px.router, provider, figures),
                px.settings.batch_discount_ppm,
            )
        )
    return OrjsonResponse({"data": model_endpoints_json(entry, endpoints)})


@router.get(
    "/images/models", summary="List image models (Image API)", responses=ok(ImageModelsList)
)
async def list_image_models(request: Request) -> OrjsonResponse:
    px = app_state(request)
    models = with_variants(px, [m for m in px.catalog.models if "image" in m.output_modalities])
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
        image_endpoint_json(entry, p, live_status(px.router, p, stats.get(p.info.slug)))
        for p in px.router.serves(entry.id)
    ]
    return OrjsonResponse({"id": entry.id, "name": entry.name, "endpoints": endpoints})
