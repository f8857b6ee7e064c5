"""The `/models` query as the current OpenRouter SDKs send it: every filter applied for real, and
the documented sorts.

A filter a model does not meet leaves it out, so a query that matches nothing is an empty list
(never the whole catalogue, never a 400 for a documented value). Figures this server does not
have (benchmark indices, tool-calling rates, data regions) match no bound on them, as
OpenRouter places models without a score outside such filters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal

from fastapi import Query

from pixelrouter.catalog import IMAGE_TOKENS_PER_MP, MICRO_PER_USD, ModelEntry
from pixelrouter.errors import InvalidRequest
from pixelrouter.providers.base import ProviderInfo

OUTPUT_MODALITIES = (
    "text",
    "image",
    "embeddings",
    "audio",
    "video",
    "rerank",
    "decisions",
    "speech",
    "transcription",
)
INPUT_MODALITIES = ("text", "image", "audio", "file", "video")
SORTS = (
    "most-popular",
    "newest",
    "top-weekly",
    "pricing-low-to-high",
    "pricing-high-to-low",
    "context-high-to-low",
    "throughput-high-to-low",
    "latency-low-to-high",
    "intelligence-high-to-low",
    "coding-high-to-low",
    "agentic-high-to-low",
    "design-arena-elo-high-to-low",
)
# Bounds on figures this server has none of: set, they match no model.
UNSCORED_BOUNDS = (
    "min_intelligence_index",
    "max_intelligence_index",
    "min_coding_index",
    "max_coding_index",
    "min_agentic_index",
    "max_agentic_index",
    "min_tool_success_rate",
    "max_tool_success_rate",
)


@dataclass(frozen=True)
class ModelQuery:
    """The `/models` (and `/models/count`) query parameters, as sent."""

    output_modalities: str | None = None
    input_modalities: str | None = None
    q: str | None = None
    category: str | None = None
    supported_parameters: str | None = None
    context: int | None = None
    min_price: float | None = None
    max_price: float | None = None
    min_output_price: float | None = None
    max_output_price: float | None = None
    arch: str | None = None
    model_authors: str | None = None
    providers: str | None = None
    distillable: str | None = None
    zdr: str | None = None
    region: str | None = None
    min_age_days: int | None = None
    max_age_days: int | None = None
    sort: str | None = None
    unscored: dict[str, float] = field(default_factory=dict)


def model_query(
    output_modalities: str | None = Query(default=None),
    input_modalities: str | None = Query(default=None),
    q: str | None = Query(default=None, max_length=200),
    category: str | None = Query(default=None, max_length=100),
    supported_parameters: str | None = Query(default=None, max_length=1000),
    context: int | None = Query(default=None, ge=0),
    min_price: float | None = Query(default=None, ge=0),
    max_price: float | None = Query(default=None, ge=0),
    min_output_price: float | None = Query(default=None, ge=0),
    max_output_price: float | None = Query(default=None, ge=0),
    arch: str | None = Query(default=None, max_length=100),
    model_authors: str | None = Query(default=None, max_length=1000),
    providers: str | None = Query(default=None, max_length=1000),
    distillable: str | None = Query(default=None, max_length=10),
    zdr: str | None = Query(default=None, max_length=10),
    region: str | None = Query(default=None, max_length=20),
    min_age_days: int | None = Query(default=None, ge=0),
    max_age_days: int | None = Query(default=None, ge=0),
    sort: str | None = Query(default=None, max_length=100),
    min_intelligence_index: float | None = Query(default=None),
    max_intelligence_index: float | None = Query(default=None),
    min_coding_index: float | None = Query(default=None),
    max_coding_index: float | None = Query(default=None),
    min_agentic_index: float | None = Query(default=None),
    max_agentic_index: float | None = Query(default=None),
    min_tool_success_rate: float | None = Query(default=None),
    max_tool_success_rate: float | None = Query(default=None),
) -> ModelQuery:
    """A FastAPI dependency: the query parameters, documented in `/openapi.json`."""
    given = locals()
    unscored = {name: given[name] for name in UNSCORED_BOUNDS if given[name] is not None}
    names = {f.name for f in fields(ModelQuery)} - {"unscored"}
    return ModelQuery(**{name: given[name] for name in names}, unscored=unscored)


def _names(text: str | None) -> set[str]:
    return {part.strip().lower() for part in (text or "").split(",") if part.strip()}


def _checked(text: str | None, known: Sequence[str], name: str) -> set[str]:
    wanted = _names(text)
    unknown = sorted(wanted - set(known))
    if unknown:
        raise InvalidRequest(
            f"{name} {', '.join(unknown)} is not a modality: use {', '.join(known)}"
            + (" or all." if name == "output_modalities" else ".")
        )
    return wanted


def usd_per_million_tokens(micro_per_mp: int) -> Decimal:
    """A per-megapixel price as OpenRouter's price filters read it: USD per million tokens."""
    return Decimal(micro_per_mp) / MICRO_PER_USD / IMAGE_TOKENS_PER_MP * 1_000_000


@dataclass(frozen=True)
class ModelFigures:
    """What sorting by usage or speed needs of a model (None: not measured)."""

    requests_last_week: int = 0
    latency_ms_p50: float | None = None
    throughput_p50: float | None = None


def matches(
    entry: ModelEntry,
    query: ModelQuery,
    providers: Sequence[ProviderInfo],
    now: datetime,
) -> bool:
    """Whether a model passes every filter of the query; `providers` serve it."""
    output = (query.output_modalities or "all").strip().lower()
    if output != "all":
        kinds = _checked(output, OUTPUT_MODALITIES, "output_modalities")
        if not kinds & set(entry.output_modalities):
            return False
    if not _checked(query.input_modalities, INPUT_MODALITIES, "input_modalities") <= set(
        entry.input_modalities
    ):
        return False  # a model must accept every input modality asked for
    if query.q is not None and query.q.strip():
        text = query.q.strip().lower()
        haystack = (entry.id, entry.name, entry.canonical_slug, entry.hf_id, *entry.aliases)
        if not any(text in item.lower() for item in haystack):
            return False
    if query.category is not None and query.category.strip():
        return False  # use-case categories rank text models; an image model has none
    if not _names(query.supported_parameters) <= set(entry.supported_parameters):
        return False
    if query.context is not None and entry.context_length < query.context:
        return False
    prompt_price = usd_per_million_tokens(entry.price.extra_mp)
    output_price = prompt_price  # SPEC §1: both token prices are the extra-megapixel rate
    for price, low, high in (
        (prompt_price, query.min_price, query.max_price),
        (output_price, query.min_output_price, query.max_output_price),
    ):
        if low is not None and price < Decimal(str(low)):
            return False
        if high is not None and price > Decimal(str(high)):
            return False
    if query.arch is not None and query.arch.strip().lower() not in entry.families:
        return False
    authors = _names(query.model_authors)
    if authors and entry.author.lower() not in authors:
        return False
    hosts = _names(query.providers)
    if hosts and not any(hosts & {p.slug.lower(), p.display_name.lower()} for p in providers):
        return False
    if query.distillable is not None:
        if query.distillable.strip().lower() not in ("true", "false"):
            raise InvalidRequest("distillable must be true or false.")
        if entry.distillable != (query.distillable.strip().lower() == "true"):
            return False
    wants_zdr = query.zdr is not None and query.zdr.strip().lower() == "true"
    if wants_zdr and not any(p.zdr for p in providers):
        return False
    if query.region is not None and query.region.strip():
        return False  # no provider here declares a data region
    age_days = (now.timestamp() - entry.created) / 86_400
    if query.min_age_days is not None and age_days < query.min_age_days:
        return False
    if query.max_age_days is not None and age_days > query.max_age_days:
        return False
    return not query.unscored


def _sort_keys() -> dict[str, Callable[[ModelEntry, ModelFigures], tuple[object, ...]]]:
    def measured(value: float | None, descending: bool) -> tuple[object, ...]:
        if value is None:
            return (1, 0.0)  # models without the figure go last
        return (0, -value if descending else value)

    return {
        "newest": lambda e, f: (-e.created,),
        "pricing-low-to-high": lambda e, f: (e.price.extra_mp,),
        "pricing-high-to-low": lambda e, f: (-e.price.extra_mp,),
        "context-high-to-low": lambda e, f: (-e.context_length,),
        "throughput-high-to-low": lambda e, f: measured(f.throughput_p50, True),
        "latency-low-to-high": lambda e, f: measured(f.latency_ms_p50, False),
        "most-popular": lambda e, f: (-f.requests_last_week,),
        "top-weekly": lambda e, f: (-f.requests_last_week,),
    }


SORT_KEYS = _sort_keys()
NEEDS_FIGURES = ("throughput-high-to-low", "latency-low-to-high", "most-popular", "top-weekly")


def sort_models(
    entries: list[ModelEntry], sort: str | None, figures: Mapping[str, ModelFigures]
) -> list[ModelEntry]:
    """The documented sorts; benchmark sorts (no model here has a score) and values this
    server does not know keep the catalogue's order, as OpenRouter does without `sort`."""
    key = SORT_KEYS.get((sort or "").strip().lower())
    if key is None:
        return entries
    return sorted(entries, key=lambda e: key(e, figures.get(e.id, ModelFigures())))
