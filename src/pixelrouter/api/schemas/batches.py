"""The Batch API's request body and, for the OpenAPI document, its answers: OpenRouter's
`BatchSubmitBody`, `BatchObject`, `BatchListResponse` and `BatchDeletedObject`, field for
field (docs/batches.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class BatchRequestItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    custom_id: str = Field(min_length=1, max_length=200, description="Unique in the batch")
    body: dict[str, Any] = Field(description="The body the single endpoint would take")


class BatchProviderPreferences(BaseModel):
    model_config = ConfigDict(extra="allow")

    only: list[str] | None = None
    allow_fallbacks: bool | None = None


class BatchSubmitBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    endpoint: str = Field(description="/v1/chat/completions, /v1/images or /v1/images/generations")
    model: str
    requests: list[BatchRequestItem] = Field(min_length=1)
    callback_url: str | None = Field(
        default=None, description="Receives the signed terminal webhook (docs/batches.md)"
    )
    completion_window: str | None = Field(
        default="24h", description="24h, or a shorter window such as 2h, 30m or 90s"
    )
    provider: BatchProviderPreferences | None = None
    on_payment_required: Literal["continue", "stop"] | None = Field(
        default=None,
        description="When an item meets the key's limit: the rest still try (continue, the "
        "default) or end as payment_required (stop)",
    )


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class BatchRequestCounts(_Shape):
    completed: int
    failed: int
    total: int


class BatchResultResponse(_Shape):
    status_code: int
    request_id: str | None
    body: dict[str, Any]


class BatchResultError(_Shape):
    message: str
    param: str | None
    type: str


class BatchResult(_Shape):
    id: str
    custom_id: str
    response: BatchResultResponse | None
    error: BatchResultError | None


class BatchObject(_Shape):
    id: str
    object: Literal["batch"]
    endpoint: str
    model: str
    status: Literal[
        "validating",
        "in_progress",
        "finalizing",
        "completed",
        "failed",
        "expired",
        "cancelling",
        "cancelled",
    ]
    completion_window: str
    created_at: int
    expires_at: int | None
    finalized_at: int | None
    provider: str | None
    error: dict[str, str] | None
    request_counts: BatchRequestCounts
    results: list[BatchResult] | None
    usage: dict[str, Any] | None


class BatchList(_Shape):
    object: Literal["list"]
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class BatchDeleted(_Shape):
    id: str
    object: Literal["batch"]
    deletion: dict[str, Any]


class WebhookSecret(_Shape):
    secret: str = Field(description="whsec_...: verifies this key's batch webhooks")
