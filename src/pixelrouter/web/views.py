"""What the pages show, computed with the functions the API uses (the catalogue's JSON
builders, `pixelrouter.stats`, `Store.activity`), so a page and the API always agree.

Everything here reads the store synchronously: the routes call it in a thread.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from pixelrouter.catalog import (
    ASPECT_RATIOS,
    IMAGE_TOKENS_PER_MP,
    MAX_PIXELS,
    MAX_SIDE,
    MIN_SIDE,
    SIDE_MULTIPLE,
    TIERS,
    Catalog,
    ModelEntry,
    billable_megapixels,
    image_price,
    micro_to_usd,
    size_for_ratio,
)
from pixelrouter.catalog_json import endpoint_json, live_status, model_json
from pixelrouter.config import Settings
from pixelrouter.loras import MAX_LORAS_PER_REQUEST, MAX_SCALE
from pixelrouter.providers.base import Provider
from pixelrouter.routing.router import Router
from pixelrouter.sse import PROGRESS
from pixelrouter.stats import (
    ProviderStats,
    UptimeHour,
    apps_ranking,
    percentiles,
    uptime_hourly,
)
from pixelrouter.stats.windows import HOURLY_HOURS, providers_stats
from pixelrouter.store import Store

from . import display
from .examples import examples, lora_example

ACTIVITY_DAYS = 30  # as GET /activity and the stats endpoint
APPS_SHOWN = 20
# Sizes the Pricing tab lists (width, height): the 1K ratios, then bigger ones.
PRICE_EXAMPLES: tuple[tuple[int, int], ...] = (
    (512, 512),
    (1024, 1024),
    (1360, 768),
    (1168, 880),
    (1440, 1440),
    (2048, 1152),
    (2048, 2048),
)


class Site(Protocol):
    """What the pages read of the app's state (the app factory's `AppState` has it)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def store(self) -> Store: ...
    @property
    def router(self) -> Router: ...
    @property
    def demo(self) -> bool: ...


# ------------------------------------------------------------------------------ catalogue


def catalogue_view(px: Site) -> list[dict[str, Any]]:
    cards = []
    for entry in px.catalog.models:
        providers = px.router.serves(entry.id)
        cards.append(
            {
                "id": entry.id,
                "name": entry.name,
                "description": entry.description,
                "modality": entry.modality,
                "context_length_text": display.count_text(entry.context_length),
                "created_date": display.day_text(entry.created),
                "price_1mp": display.usd_text(entry.price.first_mp),
                "providers": len(providers),
                "providers_up": sum(1 for p in providers if p.readiness()[0]),
            }
        )
    return cards


# ------------------------------------------------------------------------------ model page


@dataclass(frozen=True)
class ProviderFigures:
    provider: Provider
    stats: ProviderStats
    hourly: list[UptimeHour]
    status: int


def model_view(px: Site, entry: ModelEntry, now: datetime, base_url: str) -> dict[str, Any]:
    """Everything the model page shows; `data` is embedded in the page as JSON for the charts
    and the calculator."""
    providers = px.router.serves(entry.id)
    all_stats = providers_stats(px.store, [p.info.slug for p in providers], now, model=entry.id)
    figures = []
    for provider in providers:
        stats = all_stats[provider.info.slug]
        hourly = uptime_hourly(px.store, provider.info.slug, now, HOURLY_HOURS, model=entry.id)
        figures.append(
            ProviderFigures(provider, stats, hourly, live_status(px.router, provider, stats))
        )
    api_base = f"{base_url}/api/v1"
    loras = loras_view(px, entry)
    data = {
        "model": model_json(entry),
        "pricing": pricing_view(entry),
        "providers": [provider_row(entry, f) for f in figures],
        "performance": performance_view(px, entry, figures),
        "uptime": [uptime_row(f) for f in figures],
        "apps": [
            {**app.json(), "link": display.safe_link(app.http_referer)}
            for app in apps_ranking(px.store, now, model=entry.id, limit=APPS_SHOWN)
        ],
        "activity": activity_view(px, entry, now),
    }
    return {
        "entry": entry,
        "created_date": display.day_text(entry.created),
        "context_length_text": display.count_text(entry.context_length),
        "api_base": api_base,
        "examples": examples(entry, api_base),
        "loras": loras,
        "lora_example": lora_example(entry, api_base, loras[0]) if loras else "",
        "data": data,
    }


def loras_view(px: Site, entry: ModelEntry) -> list[dict[str, Any]]:
    """The LoRA adapters a request for this model may name: those the engine checked and
    accepted, the same ones `/models` lists as the variants `<model>:<name>`."""
    registry = px.settings.loras
    rows = []
    for spec in registry.accepted(entry.id):
        check = registry.check_of(spec.name)
        price = spec.price
        rows.append(
            {
                "name": spec.name,
                "description": spec.description,
                "default_scale": spec.default_scale,
                "default_scale_text": f"{spec.default_scale:g}",
                "price_text": None
                if price is None
                else f"{display.usd_text(price.first_mp)} + "
                f"{display.usd_text(price.extra_mp)} × (MP − 1)",
                "rank": check.rank if check is not None else None,
                "variant": f"{entry.id}:{spec.name}",
            }
        )
    return rows


def provider_row(entry: ModelEntry, figures: ProviderFigures) -> dict[str, Any]:
    """One row of the Providers tab: the endpoints API's JSON of the provider, and its text."""
    endpoint = endpoint_json(entry, figures.provider, figures.stats, figures.status)
    label, css = display.status_text(figures.status)
    latency = endpoint["latency_last_30m"] or {}
    throughput = endpoint["throughput_last_30m"] or {}
    price_1mp = image_price(figures.provider.info.price, 1024, 1024)
    return {
        "endpoint": endpoint,
        "slug": figures.provider.info.slug,
        "status_label": label,
        "status_class": css,
        "uptime_30m_text": display.percent_text(endpoint["uptime_last_30m"]),
        "uptime_1d_text": display.percent_text(endpoint["uptime_last_1d"]),
        "latency_p50_text": display.seconds_text(_seconds(latency.get("p50"))),
        "throughput_p50_text": display.rate_text(throughput.get("p50")),
        "price_1mp": micro_to_usd(price_1mp),
        "price_1mp_text": display.usd_text(price_1mp),
    }


def _seconds(milliseconds: float | None) -> float | None:
    """The API's milliseconds as the seconds people are shown."""
    return None if milliseconds is None else milliseconds / 1000.0


def _in_seconds(figures: dict[str, float] | None) -> dict[str, float] | None:
    return None if figures is None else {q: v / 1000.0 for q, v in figures.items()}


def uptime_row(figures: ProviderFigures) -> dict[str, Any]:
    hours = []
    for hour in figures.hourly:
        value = hour.uptime
        hours.append(
            {
                **hour.json(),
                "label": display.hour_label(hour.hour),
                "level": display.uptime_level(value),
            }
        )
    return {
        "provider_name": figures.provider.info.display_name,
        "tag": figures.provider.info.slug,
        "uptime_last_1d": figures.stats.uptime_last_1d,
        "uptime_last_1d_text": display.percent_text(figures.stats.uptime_last_1d),
        "hours": hours,
    }


def performance_view(px: Site, entry: ModelEntry, figures: list[ProviderFigures]) -> dict[str, Any]:
    """Hourly p50 latency (s per request) and throughput (image tokens/s) per provider, over the
    hours of the uptime buckets, computed from the same samples as the endpoints API's
    30-minute percentiles. Only hours with a success are read."""
    labels: list[str] = []
    series = []
    for f in figures:
        if not labels:
            labels = [display.hour_label(h.hour) for h in f.hourly]
        latency: list[float | None] = []
        throughput: list[float | None] = []
        for hour in f.hourly:
            if hour.successes == 0:
                latency.append(None)
                throughput.append(None)
                continue
            samples = px.store.success_samples(
                f.provider.info.slug,
                hour.hour - timedelta(microseconds=1),  # (since, until]: the hour's first µs
                hour.hour + timedelta(hours=1) - timedelta(microseconds=1),
                model=entry.id,
            )
            lat = percentiles([s.latency_ms / 1000.0 for s in samples], digits=4)
            thr = percentiles(
                [s.image_tokens / (max(s.latency_ms, 1) / 1000.0) for s in samples], digits=1
            )
            latency.append(lat["p50"] if lat else None)
            throughput.append(thr["p50"] if thr else None)
        series.append(
            {
                "provider_name": f.provider.info.display_name,
                "tag": f.provider.info.slug,
                "latency_p50": latency,
                "throughput_p50": throughput,
                "latency_last_30m": _in_seconds(f.stats.latency_last_30m),
                "throughput_last_30m": f.stats.throughput_last_30m,
            }
        )
    return {"labels": labels, "providers": series}


def activity_view(px: Site, entry: ModelEntry, now: datetime) -> dict[str, Any]:
    """The model's succeeded generations per UTC day for 30 days (as `GET /activity`), summed
    over providers for the table, per provider for the chart."""
    today = now.date()
    since = today - timedelta(days=ACTIVITY_DAYS - 1)
    rows = [r for r in px.store.activity(since=since, until=today) if r.model == entry.id]
    days = [(since + timedelta(days=i)).isoformat() for i in range(ACTIVITY_DAYS)]
    totals: dict[str, dict[str, int]] = defaultdict(
        lambda: dict.fromkeys(
            ("requests", "images", "megapixels", "completion_tokens", "usage_micro"), 0
        )
    )
    by_provider: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows:
        day = row.date.isoformat()
        total = totals[day]
        total["requests"] += row.requests
        total["images"] += row.images
        total["megapixels"] += row.megapixels
        total["completion_tokens"] += row.completion_tokens
        total["usage_micro"] += row.usage_micro
        provider = row.provider_name or "Unknown"
        by_provider[provider][day] = by_provider[provider].get(day, 0) + row.images
    # The fleet's spend in dollars is shown to anyone only when the operator says so.
    dollars = px.settings.public_usage_dollars
    table = [
        {
            "date": day,
            "requests": t["requests"],
            "images": t["images"],
            "megapixels": t["megapixels"],
            "completion_tokens": t["completion_tokens"],
            **(
                {
                    "usage": micro_to_usd(t["usage_micro"]),
                    "usage_text": display.usd_text(t["usage_micro"]),
                }
                if dollars
                else {}
            ),
        }
        for day, t in sorted(totals.items(), reverse=True)
    ]
    return {
        "dollars": dollars,
        "days": days,
        "images_by_provider": [
            {"provider_name": name, "images": [counts.get(day, 0) for day in days]}
            for name, counts in sorted(by_provider.items())
        ],
        "requests": [totals[day]["requests"] if day in totals else 0 for day in days],
        "table": table,
    }


def pricing_view(entry: ModelEntry) -> dict[str, Any]:
    """The price rule, in integer micro-dollars for the calculator, and example sizes."""
    price = entry.price
    rows = []
    for width, height in PRICE_EXAMPLES:
        micro = image_price(price, width, height)
        rows.append(
            {
                "size": f"{width}x{height}",
                "megapixels": billable_megapixels(width, height),
                "price_text": display.usd_text(micro),
            }
        )
    return {
        "first_mp_micro": price.first_mp,
        "extra_mp_micro": price.extra_mp,
        "input_mp_micro": price.input_mp,
        "first_mp_text": display.usd_text(price.first_mp),
        "extra_mp_text": display.usd_text(price.extra_mp),
        "image_tokens_per_mp": IMAGE_TOKENS_PER_MP,
        "max_images": entry.max_images_per_request,
        "limits": {
            "min_side": MIN_SIDE,
            "max_side": MAX_SIDE,
            "multiple": SIDE_MULTIPLE,
            "max_pixels": MAX_PIXELS,
        },
        "examples": rows,
    }


# ------------------------------------------------------------------------------ playground


def playground_view(px: Site) -> dict[str, Any]:
    entry = px.catalog.default
    return {
        "models": [{"id": m.id, "name": m.name} for m in px.catalog.models],
        # each model's adapters for the picker, embedded as JSON (`tojson` escapes markup)
        "loras": {
            m.id: [
                {
                    "name": row["name"],
                    "description": row["description"],
                    "default_scale": row["default_scale"],
                }
                for row in loras_view(px, m)
            ]
            for m in px.catalog.models
        },
        "max_loras": MAX_LORAS_PER_REQUEST,
        "max_scale": MAX_SCALE,
        "ratios": [
            {"ratio": ratio, "size": "{}x{}".format(*size_for_ratio(a, b, "1K"))}
            for ratio, (a, b) in ASPECT_RATIOS.items()
        ],
        "tiers": list(TIERS),
        "max_images": entry.max_images_per_request,
        "max_references": entry.max_reference_images,
        # the prefix of the stream's progress comments, which the playground's script reads
        "progress_prefix": PROGRESS,
    }
