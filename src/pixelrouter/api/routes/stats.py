"""Statistics for the model page: a model's per-provider uptime (hourly, 3 days), latency and
throughput, its daily activity, and the apps ranking of the month."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter, Query, Request

from pixelrouter.catalog_json import provider_stats_json
from pixelrouter.stats import apps_ranking, providers_stats, uptime_hourly
from pixelrouter.stats.windows import HOURLY_HOURS, month_start
from pixelrouter.store import utcnow

from ..responses import OrjsonResponse
from ..schemas import AppsRanking, ModelStats
from ..state import app_state
from .openapi import BEARER, READ_ERRORS, errors, ok

router = APIRouter(tags=["statistics"], dependencies=BEARER, responses=errors(*READ_ERRORS))

ACTIVITY_DAYS = 30


def _iso(moment: Any) -> str:
    return str(moment.isoformat()).replace("+00:00", "Z")


@router.get(
    "/models/{author}/{slug}/stats",
    summary="A model's statistics per provider",
    responses=ok(ModelStats),
)
async def model_stats(author: str, slug: str, request: Request) -> OrjsonResponse:
    """Per provider: uptime over 5 min / 30 min / 1 day and per hour for 72 hours, latency
    (seconds per image) and throughput (image tokens per second) percentiles over 30 min;
    and the model's succeeded requests per UTC day for 30 days."""
    px = app_state(request)
    entry = px.catalog.get(f"{author}/{slug}")
    providers = px.router.serves(entry.id)
    now = utcnow()

    def read() -> tuple[list[tuple[Any, Any]], list[Any]]:
        slugs = [p.info.slug for p in providers]
        stats = providers_stats(px.store, slugs, now, model=entry.id)
        figures = [
            (stats[slug], uptime_hourly(px.store, slug, now, HOURLY_HOURS, model=entry.id))
            for slug in slugs
        ]
        today = now.date()
        activity = [
            row
            for row in px.store.activity(since=today - timedelta(days=ACTIVITY_DAYS - 1))
            if row.model == entry.id
        ]
        return figures, activity

    figures, activity = await asyncio.to_thread(read)
    rows = [
        provider_stats_json(px.router, provider, stats, hourly)
        for provider, (stats, hourly) in zip(providers, figures, strict=True)
    ]
    return OrjsonResponse(
        {
            "data": {
                "id": entry.id,
                "name": entry.name,
                "generated_at": _iso(now),
                "providers": rows,
                "activity": [
                    {
                        "date": row.date.isoformat(),
                        "provider_name": row.provider_name,
                        "requests": row.requests,
                        "images": row.images,
                        "megapixels": row.megapixels,
                        "prompt_tokens": row.prompt_tokens,
                        "completion_tokens": row.completion_tokens,
                    }
                    for row in activity
                ],
            }
        }
    )


@router.get(
    "/apps",
    summary="Apps ranked by requests or image tokens this month",
    responses=ok(AppsRanking),
)
async def list_apps(
    request: Request,
    model: str | None = Query(default=None, description="Only this model's requests"),
    sort: Literal["requests", "image_tokens"] = Query(default="requests"),
    limit: int = Query(default=20, ge=1, le=100),
) -> OrjsonResponse:
    """Succeeded generations this calendar month (UTC) per app: its HTTP-Referer, or its
    X-OpenRouter-Title / X-Title when it sent no referer; "Unattributed" without either."""
    px = app_state(request)
    model_id = px.catalog.get(model).id if model is not None else None
    now = utcnow()
    ranking = await asyncio.to_thread(
        apps_ranking, px.store, now, model=model_id, by=sort, limit=limit
    )
    return OrjsonResponse(
        {
            "data": [app.json() for app in ranking],
            "month": month_start(now).strftime("%Y-%m"),
            "since": _iso(month_start(now)),
            "sort": sort,
            "model": model_id,
        }
    )
