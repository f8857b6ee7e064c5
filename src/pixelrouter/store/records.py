"""What the store hands out and takes in: frozen records of keys, usage, generations, the
ledger and activity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

from pixelrouter.keys import KeyKind, LimitReset
from pixelrouter.periods import LedgerEntryKind, ReservationState

GenerationState = Literal["pending", "succeeded", "failed", "cancelled"]
GenerationApi = Literal["chat", "images", "openai_images"]
GENERATION_APIS: tuple[str, ...] = ("chat", "images", "openai_images")
FINISHED_STATES: tuple[str, ...] = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class KeyRecord:
    """One API key as stored: never its plaintext, only its hash and label."""

    hash: str
    name: str
    label: str
    kind: KeyKind
    disabled: bool
    limit_micro: int | None
    limit_reset: LimitReset | None
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    rate_limit_requests: int | None = None
    rate_limit_interval_s: int | None = None

    @property
    def is_management(self) -> bool:
        return self.kind == "management"

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def limit_remaining(self, usage: KeyUsage) -> int | None:
        """Micro-dollars left in the current limit period (None: no limit)."""
        if self.limit_micro is None:
            return None
        return max(0, self.limit_micro - usage.in_period(self.limit_reset))


@dataclass(frozen=True)
class KeyUsage:
    """Micro-dollars a key spent: in all, and since 00:00 UTC today / Monday / the 1st."""

    total: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def in_period(self, reset: LimitReset | str | None) -> int:
        """The usage a limit with this reset is measured against (`None`: all time)."""
        if reset is None:
            return self.total
        return {"daily": self.daily, "weekly": self.weekly, "monthly": self.monthly}[reset]


@dataclass(frozen=True)
class NewGeneration:
    """What is known of a generation when it is admitted (inserted as `pending`)."""

    id: str  # gen-...
    model: str
    api: GenerationApi
    key_hash: str | None = None
    n: int = 1
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    streamed: bool = False
    http_referer: str | None = None
    app_title: str | None = None
    app_categories: tuple[str, ...] = ()
    user: str | None = None
    ignored_parameters: tuple[str, ...] = ()
    tokens_prompt: int | None = None
    created_at: datetime | None = None  # None: now
    session_id: str | None = None
    trace: Mapping[str, Any] | None = None
    metadata: Mapping[str, str] | None = None
    adjustments: tuple[str, ...] = ()
    # The LoRA adapters applied, in the request's order: `{"name": str, "scale": float}`.
    loras: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class GenerationRecord:
    """A stored generation, pending or finished; `provider_responses` items are
    `{"provider_name": str, "status": int, "latency": int (ms), ...}`."""

    id: str
    key_hash: str | None
    api: GenerationApi
    model: str
    state: GenerationState
    created_at: datetime
    n: int
    provider_name: str | None = None
    provider_slug: str | None = None
    total_cost_micro: int = 0
    finished_at: datetime | None = None
    latency_ms: int | None = None
    generation_time_ms: int | None = None
    streamed: bool = False
    cancelled: bool = False
    finish_reason: str | None = None
    tokens_prompt: int | None = None
    tokens_completion: int | None = None
    num_images: int = 0
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    http_referer: str | None = None
    app_title: str | None = None
    app_categories: tuple[str, ...] = ()
    user: str | None = None
    provider_responses: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)
    ignored_parameters: tuple[str, ...] = ()
    error_message: str | None = None
    error_status: int | None = None
    session_id: str | None = None
    trace: Mapping[str, Any] | None = None
    metadata: Mapping[str, str] | None = None
    adjustments: tuple[str, ...] = ()
    undelivered_images: int = 0
    loras: tuple[Mapping[str, Any], ...] = ()  # `{"name", "scale"}`, in the request's order

    @property
    def finished(self) -> bool:
        return self.state != "pending"


@dataclass(frozen=True)
class Reservation:
    """A generation's maximum cost held against its key until it is settled or released."""

    generation_id: str
    key_hash: str
    amount_micro: int  # reserved: the request's maximum cost
    state: ReservationState
    settled_micro: int  # charged: 0 while open or when released
    created_at: datetime
    expires_at: datetime  # the sweeper releases it after this
    finished_at: datetime | None


@dataclass(frozen=True)
class KeyBalance:
    """A key's spend as the ledger counters hold it, in micro-dollars."""

    period_used: int  # settled in the key's current limit period (all time without a reset)
    reserved: int  # open reservations
    total_used: int  # settled, all time

    def remaining(self, limit_micro: int | None) -> int | None:
        """What the key may still reserve under `limit_micro` (None: no limit)."""
        if limit_micro is None:
            return None
        return max(0, limit_micro - self.period_used - self.reserved)


@dataclass(frozen=True)
class LedgerEntry:
    """One append-only ledger row: a reservation made, a charge settled, or the rest released."""

    id: int
    key_hash: str
    generation_id: str
    kind: LedgerEntryKind
    amount_micro: int
    created_at: datetime


@dataclass(frozen=True)
class ActivityRow:
    """Succeeded generations of one UTC day, model and provider (GET /activity)."""

    date: date
    model: str
    provider_name: str | None
    requests: int
    images: int
    megapixels: int  # billable megapixels of the delivered images
    prompt_tokens: int
    completion_tokens: int
    usage_micro: int
