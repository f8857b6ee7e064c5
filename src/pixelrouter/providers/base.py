"""The `Provider` protocol every provider type implements, what it reports, and the defaults
a provider inherits from `ProviderBase`.

The whole contract is here: `info`, `generate`, `readiness` and `status` each provider says
for itself; `supports` / `unsupported_reason`, `refresh_status`, `probe`, `count_prompt_tokens`
and `aclose` have defaults in `ProviderBase` that a provider overrides when it knows better.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class ProviderStatus:
    """A provider's live figures: routing reads `queue_full` and `estimated_wait_s`, /metrics
    the queue and batch figures."""

    state: str = "unknown"  # the engine's state, "remote", "unreachable", "unavailable"
    queue_depth: int = 0  # requests waiting
    queue_full: bool = False  # routing tries a full queue only when no other provider is free
    estimated_wait_s: float = 0.0
    running_batch: int = 0  # requests in the batch being run
    in_flight: int = 0  # requests this process sent the provider, not yet answered
    max_queue: int | None = None  # the configured cap on `queue_depth`, if any
    queued_images: int | None = None  # None: not known (an engine reports them)
    running_images: int | None = None
    batch_sizes: Mapping[str, int] | None = field(default=None, hash=False)  # {size: batches}
    polled_at: float | None = None  # wall-clock time of the last `refresh_status` that asked
    error: str | None = None  # why the last poll failed
    # Everything the provider reports, as JSON: GET /api/v1/engine/status serves the local
    # engine's; a worker's is what its own engine reported last.
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # A provider of many workers (found by DNS): each one's own figures, by address.
    instances: Mapping[str, ProviderStatus] = field(default_factory=dict, hash=False)


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

    def supports(self, request: ImageRequest) -> bool:
        """Whether the provider can make this request at all: routing never plans it if not
        (it would make, and bill, something other than what was asked)."""
        ...

    def unsupported_reason(self, request: ImageRequest) -> str | None:
        """Why `supports(request)` is false, for the error a direct call gets; None if it is
        true."""
        ...

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): can this provider take work now, and if not, why."""
        ...

    def status(self) -> ProviderStatus:
        """What the provider knows of its queue now; no I/O."""
        ...

    async def refresh_status(self) -> ProviderStatus:
        """Ask the provider for fresh figures (routing calls it at most every
        `status_interval_s`) and return `status()`. Never raises for an unreachable provider:
        the failure shows in `status()` and `readiness()`."""
        ...

    async def probe(self) -> bool:
        """A cheap readiness check (never a paid generation): a circuit's half-open test."""
        ...

    def count_prompt_tokens(self, prompt: str) -> int | None:
        """Prompt tokens by the model's tokenizer when one is loaded, else None."""
        ...

    async def start(self) -> None:
        """Begin background upkeep (the app calls it once its event loop runs)."""
        ...

    async def aclose(self) -> None: ...


class ProviderBase(ABC):
    """The defaults of the protocol's optional parts: a provider takes every request, has no
    status to poll, is probed by its `readiness()`, counts no tokens and holds nothing to
    close. A subclass supplies `info`, `generate`, `readiness` and `status`."""

    def supports(self, request: ImageRequest) -> bool:
        return self.unsupported_reason(request) is None

    def unsupported_reason(self, request: ImageRequest) -> str | None:
        if request.loras:  # a provider applies adapters only if it says it holds them
            names = ", ".join(choice.name for choice in request.loras)
            return f"it does not hold the LoRA adapter(s) {names}"
        return None

    @abstractmethod
    def readiness(self) -> tuple[bool, str]: ...

    @abstractmethod
    def status(self) -> ProviderStatus: ...

    async def refresh_status(self) -> ProviderStatus:
        return self.status()

    async def probe(self) -> bool:
        return self.readiness()[0]

    def count_prompt_tokens(self, prompt: str) -> int | None:
        return None

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
