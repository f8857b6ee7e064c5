"""Translate the three request wire shapes into the one internal `ImageRequest`."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import secrets
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson
from pydantic import BaseModel

from pixelrouter.catalog import (
    Catalog,
    ModelEntry,
    choose_size,
    normalize_output_format,
    usd_to_micro,
)
from pixelrouter.errors import InvalidRequest
from pixelrouter.loras import LoraRegistry
from pixelrouter.refimages import MAX_REFERENCES, FetchPolicy, decode_reference, load_reference
from pixelrouter.types import (
    Attribution,
    ImageRequest,
    LoraChoice,
    ProviderPrefs,
    ReferenceImage,
)

from .schemas import (
    MAX_GUIDANCE,
    MAX_SEED,
    MAX_SESSION_ID,
    MAX_STEPS,
    ChatCompletionRequest,
    ImagesRequest,
    LoraRef,
    OpenAIImagesRequest,
    PercentileCutoffs,
    ProviderPreferences,
)

SortBy = Literal["price", "throughput", "latency"]
SORTS = ("price", "throughput", "latency", "exacto")
# `provider.options` values the providers act on; other keys are dropped, as OpenRouter does.
PASSTHROUGH_OPTIONS = ("steps", "guidance", "batching")
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_TRACE_BYTES = 8192


@dataclass(frozen=True)
class Edge:
    """What every translation needs besides the body."""

    generation_id: str
    key_hash: str | None
    attribution: Attribution
    catalog: Catalog
    fetch: FetchPolicy
    loras: LoraRegistry = dataclasses.field(default_factory=LoraRegistry)


@dataclass(frozen=True)
class Models:
    """The model a request asked for, its fallbacks, and the adapter a model variant
    (`<model id>:<adapter>`) names."""

    entry: ModelEntry
    fallbacks: tuple[str, ...]
    variant: str | None = None


def _resolve_models(edge: Edge, model: str | None, models: list[str] | None) -> Models:
    catalog = edge.catalog
    names = [m for m in ([model] if model else []) + list(models or []) if m]
    if not names:
        return Models(catalog.default, ())
    first, variant = edge.loras.split_variant(catalog, names[0])
    primary = catalog.get(first)
    fallbacks: list[str] = []
    for name in names[1:]:
        try:
            entry = catalog.get(name)
        except Exception:  # a fallback model this server does not serve is skipped
            continue
        if entry.id != primary.id and entry.id not in fallbacks:
            fallbacks.append(entry.id)
    return Models(primary, tuple(fallbacks), variant.name if variant else None)


def _loras(
    edge: Edge, models: Models, refs: list[LoraRef] | None, field: str
) -> tuple[LoraChoice, ...]:
    """The request's adapters: a model variant's at its default scale, then those of `field`,
    resolved against the registry (unknown, another model's, duplicates, bad scales: 400). A
    server whose engine fused an adapter takes only that one at its scale (400 otherwise)."""
    wanted: list[tuple[Any, Any]] = [(models.variant, None)] if models.variant else []
    wanted += [(ref.name, ref.scale) for ref in refs or []]
    choices = edge.loras.resolve(models.entry.id, wanted, field) if wanted else ()
    edge.loras.check_fused(models.entry.id, choices)
    return choices


def _check_n(n: int | None, entry: ModelEntry) -> int:
    if n is None:
        return 1
    if not 1 <= n <= entry.max_images_per_request:
        raise InvalidRequest(
            f"n must be between 1 and {entry.max_images_per_request}; got {n}.",
            metadata={"param": "n"},
        )
    return n


def _resolve_seed(seed: int | None) -> tuple[int, bool]:
    if seed is None:
        return secrets.randbelow(2**32), False
    if not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"seed must be between 0 and {MAX_SEED}; got {seed}.")
    return seed, True


def _check_steps(steps: int | None) -> int | None:
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise InvalidRequest(f"steps must be between 1 and {MAX_STEPS}; got {steps}.")
    return steps


def _check_guidance(guidance: float | None) -> float | None:
    if guidance is not None and not 0.0 <= guidance <= MAX_GUIDANCE:
        raise InvalidRequest(f"guidance must be between 0 and {MAX_GUIDANCE}; got {guidance}.")
    return guidance


def _output_compression(value: int | None, fmt: str) -> int | None:
    if value is None:
        return None
    if not 0 <= value <= 100:
        raise InvalidRequest(f"output_compression must be between 0 and 100; got {value}.")
    return value


def _usd_to_micro(value: float | str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        usd = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"provider.max_price.{name} must be a number of USD.") from exc
    if not 0 <= usd < 1e9:
        raise InvalidRequest(f"provider.max_price.{name} must be between 0 and 1e9 USD.")
    return usd_to_micro(usd)


def provider_prefs(p: ProviderPreferences | None) -> ProviderPrefs:
    if p is None:
        return ProviderPrefs()
    sort = p.sort.get("by") if isinstance(p.sort, dict) else p.sort
    if sort not in (None, *SORTS):
        raise InvalidRequest(f"provider.sort must be one of {', '.join(SORTS)}.")
    options: list[tuple[str, tuple[tuple[str, Any], ...]]] = []
    for slug, values in (p.options or {}).items():
        if not isinstance(values, dict):
            raise InvalidRequest(f"provider.options.{slug} must be an object.")
        allowed: dict[str, Any] = {}
        for key, value in values.items():
            if key == "steps":
                allowed[key] = _check_steps(_as_int(value, "steps"))
            elif key == "guidance":
                allowed[key] = _check_guidance(_as_float(value, "guidance"))
            elif key == "batching":
                allowed[key] = bool(value)
        options.append((slug, tuple(sorted(allowed.items()))))
    return ProviderPrefs(
        order=tuple(p.order or ()),
        allow_fallbacks=True if p.allow_fallbacks is None else p.allow_fallbacks,
        require_parameters=bool(p.require_parameters),
        only=tuple(p.only or ()),
        ignore=tuple(p.ignore or ()),
        # "exacto" ranks by tool-calling quality, which image providers do not have: the
        # default order serves it (and the generation lists provider.sort as ignored).
        sort=cast(SortBy | None, None if sort == "exacto" else sort),
        max_price_image_micro=_usd_to_micro(p.max_price.image, "image") if p.max_price else None,
        max_price_request_micro=(
            _usd_to_micro(p.max_price.request, "request") if p.max_price else None
        ),
        data_collection=p.data_collection or "allow",
        options=tuple(options),
        quantizations=tuple(q.strip().lower() for q in p.quantizations or () if q.strip()),
        zdr=bool(p.zdr),
        preferred_max_latency_s=_cutoffs(p.preferred_max_latency, "preferred_max_latency"),
        preferred_min_throughput=_cutoffs(p.preferred_min_throughput, "preferred_min_throughput"),
    )


def _cutoffs(value: float | PercentileCutoffs | None, name: str) -> tuple[tuple[str, float], ...]:
    """A number (the p50 cut-off) or `{p50, p75, p90, p99}`, each a finite number >= 0."""
    if value is None:
        return ()
    pairs = (
        [("p50", value)]
        if isinstance(value, int | float)
        else [(k, v) for k, v in value.model_dump(include={"p50", "p75", "p90", "p99"}).items()]
    )
    cutoffs = []
    for percentile, cutoff in pairs:
        if cutoff is None:
            continue
        if not math.isfinite(cutoff) or cutoff < 0:
            raise InvalidRequest(f"provider.{name}.{percentile} must be a number of at least 0.")
        cutoffs.append((percentile, float(cutoff)))
    return tuple(cutoffs)


def ignored_provider_fields(p: ProviderPreferences | None) -> tuple[str, ...]:
    """`provider` fields accepted but not acted on, for the generation record."""
    if p is None:
        return ()
    names = [f"provider.{name}" for name in sorted(p.model_extra or {})]
    sort = p.sort.get("by") if isinstance(p.sort, dict) else p.sort
    if sort == "exacto":
        names.append("provider.sort")
    if isinstance(p.sort, dict) and p.sort.get("partition") not in (None, "model"):
        names.append("provider.sort.partition")
    for slug, values in (p.options or {}).items():
        if isinstance(values, dict):
            names += [
                f"provider.options.{slug}.{k}" for k in values if k not in PASSTHROUGH_OPTIONS
            ]
    return tuple(names)


def _attribution(edge: Edge, body: Any) -> Attribution:
    """The edge's attribution with the body's end user, session, trace and metadata (the body's
    `session_id` wins over the `x-session-id` header)."""
    base = edge.attribution
    session = body.session_id if body.session_id is not None else base.session_id
    if session is not None and len(session) > MAX_SESSION_ID:
        raise InvalidRequest(
            f"session_id is longer than {MAX_SESSION_ID} characters ({len(session)})."
        )
    trace = body.trace.model_dump(exclude_none=True) if body.trace is not None else None
    if trace is not None and len(orjson.dumps(trace)) > MAX_TRACE_BYTES:
        raise InvalidRequest(f"trace is larger than {MAX_TRACE_BYTES} bytes of JSON.")
    return dataclasses.replace(
        base,
        user=body.user[:256] if body.user is not None else base.user,
        session_id=session or None,
        trace=trace or None,
        metadata=_metadata(body.metadata),
    )


def _metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if not value:
        return None
    if len(value) > MAX_METADATA_PAIRS:
        raise InvalidRequest(f"metadata holds at most {MAX_METADATA_PAIRS} keys; got {len(value)}.")
    for key, text in value.items():
        if len(key) > MAX_METADATA_KEY or len(text) > MAX_METADATA_VALUE:
            raise InvalidRequest(
                f"metadata keys are at most {MAX_METADATA_KEY} characters and values at most "
                f"{MAX_METADATA_VALUE}; {key[:40]!r} is longer."
            )
    return dict(value)


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise InvalidRequest(f"{name} must be an integer.")
    return int(value)


def _as_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{name} must be a number.")
    return float(value)


def _ignored(body: BaseModel, also: tuple[str, ...] = ()) -> tuple[str, ...]:
    # Names only, cut and made printable: they are stored on the generation record.
    names = sorted((body.model_extra or {}).keys()) + list(also)
    return _printable(names)


def _printable(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name[:64].encode("utf-8", "replace").decode() for name in names[:32])


def _with_ignored_provider_fields(
    ignored: tuple[str, ...], p: ProviderPreferences | None
) -> tuple[str, ...]:
    """Routing preferences not acted on are listed too, but never refuse a request under
    `require_parameters` (which is about the model's parameters)."""
    return _printable([*ignored, *ignored_provider_fields(p)])


def _require_parameters(prefs: ProviderPrefs, ignored: tuple[str, ...]) -> None:
    if prefs.require_parameters and ignored:
        raise InvalidRequest(
            "No provider supports every parameter of this request "
            f"(provider.require_parameters is true): {', '.join(ignored)}.",
            metadata={"unsupported_parameters": list(ignored)},
        )


def _check_prompt(prompt: str, entry: ModelEntry) -> str:
    if not prompt.strip():
        raise InvalidRequest("The prompt is empty: send the text of the image to make.")
    if len(prompt) > entry.context_length * 4:
        raise InvalidRequest(
            f"The prompt is longer than the model's context ({entry.context_length} tokens)."
        )
    return prompt


async def _load_references(urls: list[str], edge: Edge, entry: ModelEntry):
    if len(urls) > min(MAX_REFERENCES, entry.max_reference_images):
        raise InvalidRequest(
            f"At most {entry.max_reference_images} reference images per request; got {len(urls)}."
        )
    return tuple(
        await asyncio.gather(
            *(load_reference(url, edge.fetch, position=i + 1) for i, url in enumerate(urls))
        )
    )


def _reference_size(references: tuple[ReferenceImage, ...]) -> tuple[int, int] | None:
    if not references:
        return None
    return references[0].source_width, references[0].source_height


def _url_of(image_url: Any) -> str:
    if isinstance(image_url, str):
        return image_url
    return image_url.url


# ------------------------------------------------------------------------------- chat


def chat_prompt_and_references(body: ChatCompletionRequest) -> tuple[str, list[str]]:
    """The last user message's text parts (joined by a newline) and its image URLs."""
    for message in reversed(body.messages):
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            return message.content, []
        texts: list[str] = []
        urls: list[str] = []
        for part in message.content or []:
            if part.type == "text" and part.text is not None:
                texts.append(part.text)
            elif part.type in ("image_url", "input_image") and part.image_url is not None:
                urls.append(_url_of(part.image_url))
        return "\n".join(texts), urls
    raise InvalidRequest("messages holds no user message: the last user message is the prompt.")


async def from_chat(body: ChatCompletionRequest, edge: Edge) -> ImageRequest:
    models = _resolve_models(edge, body.model, body.models)
    entry, fallbacks = models.entry, models.fallbacks
    if body.modalities is not None and "image" not in body.modalities:
        raise InvalidRequest(
            f'{entry.id} only outputs images: set modalities to ["image"] or '
            '["image", "text"], or leave it out.'
        )
    prompt, urls = chat_prompt_and_references(body)
    _check_prompt(prompt, entry)
    cfg = body.image_config
    loras = _loras(edge, models, cfg.loras if cfg else None, "image_config.loras")
    references = await _load_references(urls, edge, entry)
    size = choose_size(
        aspect_ratio=cfg.aspect_ratio if cfg else None,
        tier=cfg.image_size if cfg else None,
        reference_size=_reference_size(references),
        tier_field="image_config.image_size",
    )
    seed, seed_given = _resolve_seed(cfg.seed if cfg and cfg.seed is not None else body.seed)
    prefs = provider_prefs(body.provider)
    ignored = _ignored(body, tuple(sorted((cfg.model_extra or {}).keys())) if cfg else ())
    _require_parameters(prefs, ignored)
    return ImageRequest(
        id=edge.generation_id,
        model=entry.id,
        prompt=prompt,
        width=size.width,
        height=size.height,
        adjustments=size.adjustments,
        n=_check_n(body.n, entry),
        seed=seed,
        seed_given=seed_given,
        steps=_check_steps(cfg.steps if cfg else None),
        guidance=_check_guidance(cfg.guidance if cfg else None),
        references=references,
        batching=cfg.batching if cfg and cfg.batching is not None else True,
        stream=bool(body.stream),
        fallback_models=fallbacks,
        loras=loras,
        prefs=prefs,
        attribution=_attribution(edge, body),
        ignored_parameters=_with_ignored_provider_fields(ignored, body.provider),
        key_hash=edge.key_hash,
    )


# ------------------------------------------------------------------- OpenRouter Image API


def _check_background(background: str | None) -> None:
    if background is not None and background.strip().lower() == "transparent":
        raise InvalidRequest(
            "background 'transparent' is not supported: this model makes opaque images "
            "(no alpha channel). Use 'opaque' or 'auto'."
        )


async def from_images(body: ImagesRequest, edge: Edge) -> ImageRequest:
    models = _resolve_models(edge, body.model, body.models)
    entry, fallbacks = models.entry, models.fallbacks
    _check_prompt(body.prompt, entry)
    _check_background(body.background)
    loras = _loras(edge, models, body.loras, "loras")
    urls = [_url_of(ref.image_url) for ref in body.input_references or []]
    references = await _load_references(urls, edge, entry)
    size = choose_size(
        size=body.size,
        aspect_ratio=body.aspect_ratio,
        tier=body.resolution,
        reference_size=_reference_size(references),
    )
    fmt = normalize_output_format(body.output_format)
    seed, seed_given = _resolve_seed(body.seed)
    prefs = provider_prefs(body.provider)
    ignored = _ignored(body)
    _require_parameters(prefs, ignored)
    return ImageRequest(
        id=edge.generation_id,
        model=entry.id,
        prompt=body.prompt,
        width=size.width,
        height=size.height,
        adjustments=size.adjustments,
        n=_check_n(body.n, entry),
        seed=seed,
        seed_given=seed_given,
        steps=_check_steps(body.steps),
        guidance=_check_guidance(body.guidance),
        references=references,
        output_format=fmt,  # type: ignore[arg-type]
        output_compression=_output_compression(body.output_compression, fmt),
        stream=bool(body.stream),
        fallback_models=fallbacks,
        loras=loras,
        prefs=prefs,
        attribution=_attribution(edge, body),
        ignored_parameters=_with_ignored_provider_fields(ignored, body.provider),
        key_hash=edge.key_hash,
    )


# --------------------------------------------------------------------- OpenAI Images API


def _openai_common(body: OpenAIImagesRequest, edge: Edge):
    models = _resolve_models(edge, body.model, None)
    entry = models.entry
    _check_prompt(body.prompt, entry)
    _check_background(body.background)
    if body.response_format == "url":
        raise InvalidRequest(
            "response_format 'url' needs an image store, and none is configured on this "
            "server: use response_format 'b64_json'."
        )
    if body.response_format not in (None, "b64_json"):
        raise InvalidRequest("response_format must be 'b64_json' or 'url'.")
    ignored = _ignored(body)
    for name in ("moderation", "style", "partial_images"):
        if getattr(body, name) is not None:
            ignored = (*ignored, name)
    return entry, ignored, _loras(edge, models, body.loras, "loras")


def from_openai(
    body: OpenAIImagesRequest,
    edge: Edge,
    references: tuple[ReferenceImage, ...] = (),
) -> ImageRequest:
    entry, ignored, loras = _openai_common(body, edge)
    size = choose_size(size=body.size, reference_size=_reference_size(references))
    fmt = normalize_output_format(body.output_format)
    seed, seed_given = _resolve_seed(body.seed)
    prefs = provider_prefs(body.provider)
    _require_parameters(prefs, ignored)
    return ImageRequest(
        id=edge.generation_id,
        model=entry.id,
        prompt=body.prompt,
        width=size.width,
        height=size.height,
        adjustments=size.adjustments,
        n=_check_n(body.n, entry),
        seed=seed,
        seed_given=seed_given,
        references=references,
        output_format=fmt,  # type: ignore[arg-type]
        output_compression=_output_compression(body.output_compression, fmt),
        stream=bool(body.stream),
        loras=loras,
        prefs=prefs,
        attribution=_attribution(edge, body),
        ignored_parameters=_with_ignored_provider_fields(ignored, body.provider),
        key_hash=edge.key_hash,
    )


async def decode_uploads(uploads: list[bytes], entry: ModelEntry) -> tuple[ReferenceImage, ...]:
    if len(uploads) > entry.max_reference_images:
        raise InvalidRequest(
            f"At most {entry.max_reference_images} images per edit; got {len(uploads)}."
        )
    return tuple(
        await asyncio.gather(
            *(
                asyncio.to_thread(decode_reference, data, position=i + 1)
                for i, data in enumerate(uploads)
            )
        )
    )
