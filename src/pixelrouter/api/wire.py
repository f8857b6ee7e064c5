"""Translate the three request wire shapes into the one internal `ImageRequest`."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from pixelrouter.catalog import (
    Catalog,
    ModelEntry,
    choose_size,
    normalize_output_format,
)
from pixelrouter.errors import InvalidRequest
from pixelrouter.loras import LoraRegistry
from pixelrouter.refimages import MAX_REFERENCES, FetchPolicy, decode_reference, load_reference
from pixelrouter.types import (
    Attribution,
    ImageRequest,
    LoraChoice,
    ReferenceImage,
)

from .preferences import (
    check_guidance,
    check_steps,
    printable,
    provider_prefs,
    require_parameters,
    with_ignored_provider_fields,
)
from .schemas import (
    MAX_SEED,
    MAX_SESSION_ID,
    ChatCompletionRequest,
    ImagesRequest,
    LoraRef,
    OpenAIImagesRequest,
)

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


def _output_compression(value: int | None, fmt: str) -> int | None:
    if value is None:
        return None
    if not 0 <= value <= 100:
        raise InvalidRequest(f"output_compression must be between 0 and 100; got {value}.")
    return value


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


def _ignored(body: BaseModel, also: tuple[str, ...] = ()) -> tuple[str, ...]:
    # Names only, cut and made printable: they are stored on the generation record.
    names = sorted((body.model_extra or {}).keys()) + list(also)
    return printable(names)


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
    require_parameters(prefs, ignored)
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
        steps=check_steps(cfg.steps if cfg else None),
        guidance=check_guidance(cfg.guidance if cfg else None),
        references=references,
        batching=cfg.batching if cfg and cfg.batching is not None else True,
        stream=bool(body.stream),
        fallback_models=fallbacks,
        loras=loras,
        prefs=prefs,
        attribution=_attribution(edge, body),
        ignored_parameters=with_ignored_provider_fields(ignored, body.provider),
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
    require_parameters(prefs, ignored)
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
        steps=check_steps(body.steps),
        guidance=check_guidance(body.guidance),
        references=references,
        output_format=fmt,  # type: ignore[arg-type]
        output_compression=_output_compression(body.output_compression, fmt),
        stream=bool(body.stream),
        fallback_models=fallbacks,
        loras=loras,
        prefs=prefs,
        attribution=_attribution(edge, body),
        ignored_parameters=with_ignored_provider_fields(ignored, body.provider),
        key_hash=edge.key_hash,
    )


# --------------------------------------------------------------------- OpenAI Images API


def _openai_common(body: OpenAIImagesRequest, edge: Edge):
    models = _resolve_models(edge, body.model, None)
    entry = models.entry
    _check_prompt(body.prompt, entry)
    _check_background(body.background)
    if body.response_format == "url" and body.stream:
        raise InvalidRequest(
            "A stream carries its images as b64_json: response_format 'url' is for answers "
            "that are not streamed."
        )
    if body.response_format not in (None, "b64_json", "url"):
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
    require_parameters(prefs, ignored)
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
        ignored_parameters=with_ignored_provider_fields(ignored, body.provider),
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
