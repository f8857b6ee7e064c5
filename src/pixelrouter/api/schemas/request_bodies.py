"""Wire models of the request bodies the API accepts, and the bounds `wire.py` checks them by.

Unknown fields are allowed, so OpenAI and OpenRouter clients that send extra parameters keep
working; such parameters are listed as ignored on the generation record. Bounds that `wire.py`
checks (with its own messages) are stated in the schema too, so `/openapi.json` says what the
server accepts.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_IMAGES = 10  # OpenRouter's bound on `n`
MAX_SESSION_ID = 256
MAX_SEED = 2**63 - 1 - 16  # seed + i must stay a valid torch seed
MAX_STEPS = 100
MAX_GUIDANCE = 30.0


def _bounds(minimum: float, maximum: float) -> Any:
    """Documented bounds of an optional number, checked in `wire.py` with a clearer message
    than a validation error would give."""
    return Field(default=None, json_schema_extra={"minimum": minimum, "maximum": maximum})


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "text must not contain NUL characters (\\u0000)"
    if _SURROGATE.search(value):
        return "text must be valid Unicode (it holds an unpaired surrogate)"
    return None


def _check_text(value: Any) -> None:
    """Every string of a request body, keys of unknown fields included: no NUL (PostgreSQL
    cannot store it, so it would mean something else on each backend) and no lone surrogate
    (JSON can carry `"\\ud800"`; no tokenizer, database or encoder takes it)."""
    if isinstance(value, str):
        problem = _text_problem(value)
        if problem is not None:
            raise ValueError(problem)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_text(item)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Request(_Open):
    """A request body: its text is checked once, whole, before the fields are validated."""

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        _check_text(data)
        return data


class ImageURL(_Open):
    url: str
    detail: str | None = None


class ContentPart(_Open):
    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None


class ChatMessage(_Open):
    role: str
    content: str | list[ContentPart] | None = None


class MaxPrice(_Open):
    image: float | str | None = None
    request: float | str | None = None
    prompt: float | str | None = None
    completion: float | str | None = None


class PercentileCutoffs(_Open):
    p50: float | None = None
    p75: float | None = None
    p90: float | None = None
    p99: float | None = None


class ProviderPreferences(_Open):
    order: list[str] | None = None
    allow_fallbacks: bool | None = None
    require_parameters: bool | None = None
    only: list[str] | None = None
    ignore: list[str] | None = None
    sort: str | dict[str, Any] | None = None
    max_price: MaxPrice | None = None
    data_collection: Literal["allow", "deny"] | None = None
    options: dict[str, dict[str, Any]] | None = None
    quantizations: list[str] | None = None
    zdr: bool | None = None
    preferred_max_latency: float | PercentileCutoffs | None = None  # seconds
    preferred_min_throughput: float | PercentileCutoffs | None = None  # tokens per second


class TraceConfig(_Open):
    """OpenRouter's `trace` (observability); stored on the generation as sent."""

    trace_id: str | None = None
    trace_name: str | None = None
    span_name: str | None = None
    generation_name: str | None = None
    parent_span_id: str | None = None


class _Tracked(_Request):
    """Fields of the current API that group requests; stored on the generation."""

    session_id: str | None = Field(default=None, max_length=MAX_SESSION_ID)
    trace: TraceConfig | None = None
    metadata: dict[str, str] | None = None


class LoraRef(_Open):
    """One LoRA adapter a request applies (docs/loras.md); checked in `wire.py`."""

    name: Any = Field(default=None, json_schema_extra={"type": "string"})
    scale: Any = Field(
        default=None,
        json_schema_extra={"type": "number", "minimum": -4, "maximum": 4},
        description="Strength of the adapter; its default_scale when left out; 0 is no adapter.",
    )


_LORAS_DOC = "LoRA adapters to apply, at most 4 (docs/loras.md)."


class ImageConfig(_Open):
    aspect_ratio: str | None = None
    image_size: str | None = None
    steps: int | None = _bounds(1, MAX_STEPS)
    guidance: float | None = _bounds(0, MAX_GUIDANCE)
    seed: int | None = _bounds(0, MAX_SEED)
    batching: bool | None = None
    loras: list[LoraRef] | None = Field(default=None, description=_LORAS_DOC)


class ChatCompletionRequest(_Tracked):
    model: str | None = None
    models: list[str] | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    modalities: list[str] | None = None
    image_config: ImageConfig | None = None
    n: int | None = _bounds(1, MAX_IMAGES)
    seed: int | None = _bounds(0, MAX_SEED)
    stream: bool | None = False
    provider: ProviderPreferences | None = None
    user: str | None = None


class InputReference(_Open):
    type: str = "image_url"
    image_url: ImageURL | str


class ImagesRequest(_Tracked):
    """OpenRouter Image API: `POST /api/v1/images`."""

    model: str | None = None
    models: list[str] | None = None
    prompt: str
    n: int | None = _bounds(1, MAX_IMAGES)
    size: str | None = None
    resolution: str | None = None
    aspect_ratio: str | None = None
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None
    output_compression: int | None = _bounds(0, 100)
    seed: int | None = _bounds(0, MAX_SEED)
    input_references: list[InputReference] | None = None
    stream: bool | None = False
    provider: ProviderPreferences | None = None
    user: str | None = None
    steps: int | None = _bounds(1, MAX_STEPS)
    guidance: float | None = _bounds(0, MAX_GUIDANCE)
    loras: list[LoraRef] | None = Field(default=None, description=_LORAS_DOC)


class OpenAIImagesRequest(_Tracked):
    """OpenAI Images API: `POST /api/v1/images/generations`."""

    prompt: str
    model: str | None = None
    n: int | None = _bounds(1, MAX_IMAGES)
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    output_compression: int | None = _bounds(0, 100)
    moderation: str | None = None
    style: str | None = None
    user: str | None = None
    seed: int | None = _bounds(0, MAX_SEED)
    stream: bool | None = False
    partial_images: int | None = None
    provider: ProviderPreferences | None = None
    loras: list[LoraRef] | None = Field(default=None, description=_LORAS_DOC)


class CreateKeyRequest(_Request):
    name: str = Field(min_length=1, max_length=200)
    # strict: `true` or "5" is not a number of dollars or requests (lax mode would coerce it)
    limit: float | None = Field(default=None, ge=0, le=1e9, strict=True)
    rate_limit_requests: int | None = Field(default=None, ge=1, le=1_000_000_000, strict=True)
    rate_limit_interval_s: int | None = Field(default=None, ge=1, le=86400, strict=True)
    limit_reset: Literal["daily", "weekly", "monthly"] | None = None
    expires_at: str | None = None
    include_byok_in_limit: bool | None = None


class UpdateKeyRequest(_Request):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    disabled: bool | None = None
    # strict: `true` or "5" is not a number of dollars or requests (lax mode would coerce it)
    limit: float | None = Field(default=None, ge=0, le=1e9, strict=True)
    rate_limit_requests: int | None = Field(default=None, ge=1, le=1_000_000_000, strict=True)
    rate_limit_interval_s: int | None = Field(default=None, ge=1, le=86400, strict=True)
    limit_reset: Literal["daily", "weekly", "monthly"] | None = None
    expires_at: str | None = None
    include_byok_in_limit: bool | None = None
