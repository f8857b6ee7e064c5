"""The `Provider` protocol every provider type implements, and the errors they raise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pixelrouter.catalog import Price
from pixelrouter.types import ImageRequest, ImageResult, ProgressEvent


@dataclass(frozen=True)
class ProviderInfo:
    """What routing and the catalogue need to know about a provider."""

    slug: str  # used in provider.order / only / ignore
    display_name: str  # shown as `provider` in responses
    models: tuple[str, ...]
    price: Price
    kind: str  # local | pixelrouter | openrouter | openai-images | bfl
    quantization: str | None = None
    data_collection: str = "deny"
    supported_parameters: tuple[str, ...] = ()
    zdr: bool = False  # zero data retention, as declared (`provider.zdr` routes on it)


@runtime_checkable
class Provider(Protocol):
    @property
    def info(self) -> ProviderInfo:
        """Slug, display name, models, price (it may change once weights are loaded)."""
        ...

    async def generate(
        self,
        request: ImageRequest,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> ImageResult:
        """Make the request's images. Client errors raise `InvalidRequest`-family errors;
        provider-caused failures raise `ProviderError`."""
        ...

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): can this provider take work now, and if not, why."""
        ...

    def status(self) -> dict[str, Any]:
        """Live figures routing reads: `queue_depth`, `queue_full`, `estimated_wait_s`."""
        ...

    async def probe(self) -> bool:
        """A cheap readiness check (never a paid generation): a circuit's half-open test."""
        ...

    def count_prompt_tokens(self, prompt: str) -> int | None:
        """Prompt tokens by the model's tokenizer when one is loaded, else None."""
        ...

    async def aclose(self) -> None: ...
