"""Wire models of the requests the API accepts (responses are rendered in `render.py`), and
the shapes the OpenAPI document gives every response, errors included.

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


# --------------------------------------------------------------------------------------
# Response shapes, for the OpenAPI document only: the routes render their JSON themselves
# (`render.py`), and these name the fields a client may rely on. Extra fields are allowed.


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorMetadata(_Shape):
    error_type: str = Field(description="invalid_request, invalid_image, authentication, ...")


class ErrorBody(_Shape):
    code: int = Field(description="The HTTP status, repeated")
    message: str = Field(description="What went wrong, in words a person can act on")
    metadata: ErrorMetadata


class ErrorEnvelope(BaseModel):
    """SPEC §5: every 4xx and 5xx body."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorBody


class Usage(_Shape):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float


class ChatImageURL(_Shape):
    url: str


class ChatImage(_Shape):
    type: Literal["image_url"]
    image_url: ChatImageURL


class ChatResponseMessage(_Shape):
    role: Literal["assistant"]
    content: str | None
    images: list[ChatImage]


class ChatChoice(_Shape):
    index: int
    finish_reason: str | None
    message: ChatResponseMessage


class ChatCompletion(_Shape):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    provider: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class ImageData(_Shape):
    b64_json: str
    media_type: str


class ImagesResponse(_Shape):
    created: int
    data: list[ImageData]
    usage: Usage


class OpenAIImageData(_Shape):
    """One image: `b64_json`, or with `response_format: "url"` the signed `url` it is stored
    at (docs/image-store.md)."""

    b64_json: str | None = None
    url: str | None = None


class OpenAIImagesResponse(_Shape):
    created: int
    data: list[OpenAIImageData]
    usage: Usage


class ModelArchitecture(_Shape):
    input_modalities: list[str]
    output_modalities: list[str]


class Model(_Shape):
    id: str
    canonical_slug: str
    name: str
    created: int
    context_length: int
    architecture: ModelArchitecture
    pricing: dict[str, str]
    supported_parameters: list[str]


class ModelsList(_Shape):
    data: list[Model]
    total_count: int


class LoraPrice(_Shape):
    first_mp: float = Field(description="USD for an image's first megapixel")
    extra_mp: float = Field(description="USD for each further megapixel")


class Lora(_Shape):
    name: str
    models: list[str]
    default_scale: float
    price: LoraPrice | None = Field(description="null: the serving provider's price")
    description: str
    rank: int | None = Field(description="null unless status is ready")
    dtype: str | None = Field(description="null unless status is ready")
    status: str = Field(description="ready, refused or unchecked")
    reason: str | None = Field(description="why it was refused; null otherwise")
    fused: bool = Field(
        default=False, description="fused into this server's weights: the only adapter it serves"
    )


class LorasList(_Shape):
    data: list[Lora]


class LoraResponse(_Shape):
    data: Lora


class LoraName(_Shape):
    name: str


class LoraDeleted(_Shape):
    deleted: bool
    data: LoraName


class ModelsCountData(_Shape):
    count: int


class ModelsCount(_Shape):
    data: ModelsCountData


class ModelResponse(_Shape):
    data: Model


class ProviderEntry(_Shape):
    name: str
    slug: str
    privacy_policy_url: str | None


class ProvidersList(_Shape):
    data: list[ProviderEntry]


class Endpoint(_Shape):
    name: str
    provider_name: str
    tag: str
    status: int
    pricing: dict[str, str]


class ModelEndpointsData(_Shape):
    id: str
    name: str
    endpoints: list[Endpoint]


class ModelEndpoints(_Shape):
    data: ModelEndpointsData


class ImageModel(_Shape):
    id: str
    name: str
    endpoints: str
    pricing: list[dict[str, Any]]


class ImageModelsList(_Shape):
    data: list[ImageModel]


class ImageEndpoint(_Shape):
    provider_name: str
    provider_slug: str
    status: int


class ImageModelEndpoints(_Shape):
    id: str
    name: str
    endpoints: list[ImageEndpoint]


class ModelStatsData(_Shape):
    id: str
    providers: list[dict[str, Any]]
    activity: list[dict[str, Any]]


class ModelStats(_Shape):
    data: ModelStatsData


class AppsRanking(_Shape):
    data: list[dict[str, Any]]
    month: str
    sort: str


class GenerationData(_Shape):
    id: str
    model: str
    total_cost: float
    created_at: str
    streamed: bool
    cancelled: bool
    provider_responses: list[dict[str, Any]]


class GenerationResponse(_Shape):
    data: GenerationData


class KeyLimits(_Shape):
    limit: float | None
    limit_remaining: float | None
    limit_reset: str | None
    usage: float
    usage_daily: float
    usage_weekly: float
    usage_monthly: float
    is_management_key: bool


class CurrentKey(_Shape):
    data: KeyLimits


class Key(_Shape):
    hash: str
    name: str
    label: str
    disabled: bool
    limit: float | None
    limit_remaining: float | None
    usage: float
    created_at: str | None


class KeyResponse(_Shape):
    data: Key


class KeyCreated(_Shape):
    data: Key
    key: str = Field(description="The new key in plain text, shown this once")


class KeysList(_Shape):
    data: list[Key]


class KeyDeleted(_Shape):
    deleted: bool


class CreditsData(_Shape):
    total_credits: float
    total_usage: float


class Credits(_Shape):
    data: CreditsData


class ActivityList(_Shape):
    data: list[dict[str, Any]]


class EngineStatus(_Shape):
    data: dict[str, Any]


class Health(_Shape):
    status: str


class Ready(_Shape):
    status: str
    providers: list[dict[str, Any]]
