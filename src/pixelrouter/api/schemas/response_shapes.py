"""Response shapes, for the OpenAPI document only: the routes render their JSON themselves
(`render.py`), and these name the fields a client may rely on, errors included. Extra fields
are allowed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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
