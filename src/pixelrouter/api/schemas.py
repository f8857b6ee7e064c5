"""Wire models of the requests the API accepts (responses are rendered in `render.py`).

Unknown fields are allowed, so OpenAI and OpenRouter clients that send extra parameters keep
working; such parameters are listed as ignored on the generation record.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _unicode_only(value: Any) -> Any:
    """JSON can carry lone surrogates (`"\\ud800"`); no model, tokenizer or database takes
    them, so they are a 400 at the edge."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "text must be valid Unicode (it holds an unpaired surrogate)"
            ) from None
    elif isinstance(value, list):
        for item in value:
            _unicode_only(item)
    return value


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")

    @field_validator("*", mode="after")
    @classmethod
    def _valid_text(cls, value: Any) -> Any:
        return _unicode_only(value)


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


class ImageConfig(_Open):
    aspect_ratio: str | None = None
    image_size: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    batching: bool | None = None


class ChatCompletionRequest(_Open):
    model: str | None = None
    models: list[str] | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    modalities: list[str] | None = None
    image_config: ImageConfig | None = None
    n: int | None = None
    seed: int | None = None
    stream: bool | None = False
    provider: ProviderPreferences | None = None
    user: str | None = None


class InputReference(_Open):
    type: str = "image_url"
    image_url: ImageURL | str


class ImagesRequest(_Open):
    """OpenRouter Image API: `POST /api/v1/images`."""

    model: str | None = None
    models: list[str] | None = None
    prompt: str
    n: int | None = None
    size: str | None = None
    resolution: str | None = None
    aspect_ratio: str | None = None
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    seed: int | None = None
    input_references: list[InputReference] | None = None
    stream: bool | None = False
    provider: ProviderPreferences | None = None
    user: str | None = None
    steps: int | None = None
    guidance: float | None = None


class OpenAIImagesRequest(_Open):
    """OpenAI Images API: `POST /api/v1/images/generations`."""

    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    moderation: str | None = None
    style: str | None = None
    user: str | None = None
    seed: int | None = None
    stream: bool | None = False
    partial_images: int | None = None
    provider: ProviderPreferences | None = None


class CreateKeyRequest(_Open):
    name: str = Field(min_length=1, max_length=200)
    limit: float | None = Field(default=None, ge=0, le=1e9)
    rate_limit_requests: int | None = Field(default=None, ge=1)
    rate_limit_interval_s: int | None = Field(default=None, ge=1, le=86400)
    limit_reset: Literal["daily", "weekly", "monthly"] | None = None
    expires_at: str | None = None
    include_byok_in_limit: bool | None = None


class UpdateKeyRequest(_Open):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    disabled: bool | None = None
    limit: float | None = Field(default=None, ge=0, le=1e9)
    rate_limit_requests: int | None = Field(default=None, ge=1)
    rate_limit_interval_s: int | None = Field(default=None, ge=1, le=86400)
    limit_reset: Literal["daily", "weekly", "monthly"] | None = None
    expires_at: str | None = None
    include_byok_in_limit: bool | None = None
