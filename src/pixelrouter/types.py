"""The one internal request type and the one result type every edge translates to and from."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pixelrouter.catalog import Price

OutputFormat = Literal["png", "jpeg", "webp"]
Priority = Literal["interactive", "batch"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class ReferenceImage:
    """A validated reference image: RGB pixels already resized to at most 1 MP for the model."""

    rgb: bytes
    width: int
    height: int
    source_width: int
    source_height: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.rgb).hexdigest()


@dataclass(frozen=True)
class Attribution:
    """Who asked: the app (HTTP-Referer / X-OpenRouter-Title / X-Title), the end user, and how
    the caller groups its requests (`session_id`, `trace`, `metadata`; stored, never sent on)."""

    referer: str | None = None
    title: str | None = None
    categories: tuple[str, ...] = ()
    user: str | None = None
    session_id: str | None = None
    trace: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    metadata: dict[str, str] | None = field(default=None, hash=False, compare=False)


Percentiles = tuple[tuple[str, float], ...]  # (("p50", 2.0), ("p90", 5.0)): cut-offs by name


@dataclass(frozen=True)
class ProviderPrefs:
    """The SPEC §4 `provider` object, already validated."""

    order: tuple[str, ...] = ()
    allow_fallbacks: bool = True
    require_parameters: bool = False
    only: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    sort: Literal["price", "throughput", "latency"] | None = None
    max_price_image_micro: int | None = None
    max_price_request_micro: int | None = None
    data_collection: Literal["allow", "deny"] = "allow"
    # {provider or author slug: {"steps": .., "guidance": ..}} passthrough options
    options: tuple[tuple[str, tuple[tuple[str, float | int | bool | str], ...]], ...] = ()
    quantizations: tuple[str, ...] = ()  # only providers that declare one of these
    zdr: bool = False  # only providers that declare zero data retention
    # Soft limits from the live statistics: providers beyond them are tried after the others.
    preferred_max_latency_s: Percentiles = ()
    preferred_min_throughput: Percentiles = ()  # image tokens per second


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA adapter a request applies, at a scale; resolved against the registry at the
    edge (`loras.LoraRegistry.resolve`), so `price` is the adapter's price override, if any."""

    name: str
    scale: float
    price: Price | None = None


@dataclass(frozen=True)
class ImageRequest:
    """One generation request, whatever wire shape it came in."""

    id: str  # "gen-..." generation id, also the X-Generation-Id header
    model: str  # canonical model id from the catalogue
    prompt: str
    width: int
    height: int
    n: int = 1
    seed: int = 0  # image i uses torch.Generator("cpu").manual_seed(seed + i)
    seed_given: bool = False
    steps: int | None = None  # None: the model's default
    guidance: float | None = None  # None: the model's default
    references: tuple[ReferenceImage, ...] = ()
    output_format: OutputFormat = "png"
    output_compression: int | None = None
    batching: bool = True  # False: run alone, for exact bytes
    stream: bool = False
    fallback_models: tuple[str, ...] = ()
    prefs: ProviderPrefs = field(default_factory=ProviderPrefs)
    attribution: Attribution = field(default_factory=Attribution)
    ignored_parameters: tuple[str, ...] = ()
    key_hash: str | None = None
    # What was changed to make the request (a tier clamped or mapped), recorded on the
    # generation; an explicit WxH is never changed.
    adjustments: tuple[str, ...] = ()
    # LoRA adapters applied, in the order given (scale 0 already dropped: it is no adapter)
    loras: tuple[LoraChoice, ...] = ()
    # "batch": the engine runs it only when no interactive request is waiting (docs/batches.md)
    priority: Priority = "interactive"
    # An item of a batch (`POST /api/v1/batches`): priced at the batch discount.
    in_batch: bool = False

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.output_format]


class Encoded:
    """The bytes of an image file, kept in the form they arrived in: raw bytes (the engine, a
    download) or base64 text (an upstream's JSON). The other form is computed once, when first
    asked for, so an image passed from an upstream's JSON to a client's JSON is never decoded
    and encoded again."""

    __slots__ = ("_b64", "_data")

    def __init__(self, data: bytes | None = None, *, b64: str | None = None) -> None:
        if (data is None) == (b64 is None):
            raise ValueError("an Encoded image holds either bytes or base64 text")
        self._data = data
        self._b64 = b64

    @property
    def data(self) -> bytes:
        if self._data is None:
            assert self._b64 is not None
            self._data = binascii.a2b_base64(self._b64, strict_mode=True)
        return self._data

    @property
    def b64(self) -> str:
        if self._b64 is None:
            assert self._data is not None
            self._b64 = base64.b64encode(self._data).decode("ascii")
        return self._b64

    @property
    def is_b64(self) -> bool:
        """Held as base64 text (not yet decoded)."""
        return self._data is None

    def head(self, size: int) -> bytes:
        """The first `size` bytes (or fewer), decoding only what they need."""
        if self._data is not None:
            return self._data[:size]
        assert self._b64 is not None
        chars = -(-size // 3) * 4
        return binascii.a2b_base64(self._b64[:chars], strict_mode=True)[:size]

    def tail(self, size: int) -> bytes:
        """The last `size` bytes (or fewer), decoding only what they need (the text is whole
        quads of base64, its padding at the end)."""
        if self._data is not None:
            return self._data[-size:] if size else b""
        assert self._b64 is not None
        chars = (-(-size // 3) + 1) * 4
        start = max(0, len(self._b64) - chars)
        start -= start % 4
        return binascii.a2b_base64(self._b64[start:], strict_mode=True)[-size:] if size else b""


class GeneratedImage:
    """One delivered, encoded image. `data` is the file's bytes, `b64` the same as base64
    text; whichever was not given is computed on first use."""

    __slots__ = ("_encoded", "height", "index", "media_type", "seed", "width")

    def __init__(
        self,
        data: bytes | Encoded,
        media_type: str,
        width: int,
        height: int,
        seed: int,
        index: int,
    ) -> None:
        self._encoded = data if isinstance(data, Encoded) else Encoded(data)
        self.media_type = media_type
        self.width = width
        self.height = height
        self.seed = seed
        self.index = index

    @property
    def data(self) -> bytes:
        return self._encoded.data

    @property
    def b64(self) -> str:
        return self._encoded.b64

    def __repr__(self) -> str:
        return (
            f"GeneratedImage({self.media_type}, {self.width}x{self.height}, "
            f"seed={self.seed}, index={self.index})"
        )


@dataclass(frozen=True)
class ProviderAttempt:
    """One try at one provider, as listed in the generation's `provider_responses`."""

    provider_name: str
    status: int  # HTTP-like status of the attempt (200 ok)
    latency_ms: int
    error: str | None = None
    provider_slug: str = ""
    model: str = ""  # the model it was tried for (fallback models are tried in turn)


@dataclass(frozen=True)
class ImageResult:
    """What a provider delivered for a request. Frozen: a changed copy is made with
    `dataclasses.replace` (the router stamps the serving provider and the attempts)."""

    request_id: str
    model: str
    images: tuple[GeneratedImage, ...]
    generation_time_ms: int
    prompt_tokens: int
    failed_images: int = 0
    # The provider that served it: stamped by the router from the provider itself, so no
    # provider (the engine least of all) has to know its own name.
    provider_slug: str = ""
    provider_name: str = ""  # display name, e.g. "Local (demo weights)"
    attempts: tuple[ProviderAttempt, ...] = ()
    demo: bool = False


@dataclass(frozen=True)
class ProgressEvent:
    """Denoising progress of one request: step `step` of `total_steps` finished."""

    request_id: str
    step: int
    total_steps: int


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class GenerationEnd:
    """What observers (the /metrics counters) hear when a generation is closed."""

    request_id: str
    state: str  # succeeded | failed | cancelled | undelivered
    provider_slug: str | None  # the provider that served it
    images: int
    megapixels: int  # billable megapixels delivered
    attempts: tuple[ProviderAttempt, ...] = field(default=())


GenerationObserver = Callable[[GenerationEnd], None]
