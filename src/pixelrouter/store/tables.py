"""The schema as SQLAlchemy Core tables; Alembic migrations create it, this module describes it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back tz-aware UTC, on SQLite and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: pass a tz-aware UTC datetime")
        value = value.astimezone(UTC)
        # SQLite has no time zones: store naive UTC text, which also sorts correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


NUL_STANDIN = "\ufffd"


def without_nul(value: Any) -> Any:
    """The value with every NUL character (in strings, list items, object keys and values)
    replaced by U+FFFD, which both backends store alike."""
    if isinstance(value, str):
        return value.replace("\x00", NUL_STANDIN) if "\x00" in value else value
    if isinstance(value, list | tuple):
        return [without_nul(item) for item in value]
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    return value


class SafeString(TypeDecorator[str]):
    """Text that means the same on SQLite and PostgreSQL. PostgreSQL's text cannot hold NUL
    (a write with one fails, and with it the record of a delivered image), so NUL becomes
    U+FFFD on both, in stored values and in the values a query compares with. The API refuses
    NUL at the edge; this is the floor under that."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return without_nul(value) if value is not None else None


class SafeText(SafeString):
    """`SafeString` without a length: TEXT."""

    impl = Text
    cache_ok = True


class SafeJSON(TypeDecorator[Any]):
    """JSON (JSONB on PostgreSQL, which cannot hold \\u0000 either) without NUL characters."""

    impl = JSON
    cache_ok = True

    def __init__(self, *, none_as_null: bool = False) -> None:
        super().__init__(none_as_null=none_as_null)
        self.none_as_null = none_as_null

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB(none_as_null=self.none_as_null))
        return dialect.type_descriptor(JSON(none_as_null=self.none_as_null))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return without_nul(value)


def JSONList() -> Any:  # noqa: N802 - reads as a type in column definitions
    """A JSON column (JSONB on PostgreSQL) holding a list."""
    return SafeJSON()


def JSONObject() -> Any:  # noqa: N802 - reads as a type in column definitions
    """A JSON column (JSONB on PostgreSQL) holding an object, or NULL."""
    return SafeJSON(none_as_null=True)


api_keys = Table(
    "api_keys",
    metadata,
    Column("hash", SafeString(64), primary_key=True),  # SHA-256 hex of the plaintext key
    Column("name", SafeString(200), nullable=False),
    Column("label", SafeString(32), nullable=False),  # sk-pr-v1-abc...f09
    Column("kind", SafeString(16), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("limit_micro", BigInteger, nullable=True),  # credit limit, micro-dollars
    Column("limit_reset", SafeString(16), nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("rate_limit_requests", Integer, nullable=True),
    Column("rate_limit_interval_s", Integer, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("kind IN ('inference', 'management')", name="kind"),
    CheckConstraint(
        "limit_reset IS NULL OR limit_reset IN ('daily', 'weekly', 'monthly')", name="limit_reset"
    ),
    CheckConstraint("limit_micro IS NULL OR limit_micro >= 0", name="limit_micro"),
)

generations = Table(
    "generations",
    metadata,
    Column("id", SafeString(64), primary_key=True),  # gen-...
    # No foreign key: the record outlives a deleted key (activity and stats keep it).
    Column("key_hash", SafeString(64), nullable=True),
    Column("api", SafeString(16), nullable=False),
    Column("model", SafeString(200), nullable=False),
    Column("provider_name", SafeString(200), nullable=True),
    Column("provider_slug", SafeString(200), nullable=True),
    Column("state", SafeString(16), nullable=False),
    Column("total_cost_micro", BigInteger, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("latency_ms", Integer, nullable=True),
    Column("generation_time_ms", Integer, nullable=True),
    Column("streamed", Boolean, nullable=False, default=False),
    Column("cancelled", Boolean, nullable=False, default=False),
    Column("finish_reason", SafeString(32), nullable=True),
    Column("tokens_prompt", Integer, nullable=True),
    Column("tokens_completion", Integer, nullable=True),
    Column("num_images", Integer, nullable=False, default=0),  # delivered
    Column("n", Integer, nullable=False),  # requested
    Column("width", Integer, nullable=True),
    Column("height", Integer, nullable=True),
    Column("seed", BigInteger, nullable=True),
    Column("http_referer", SafeText(), nullable=True),
    Column("app_title", SafeText(), nullable=True),
    Column("app_categories", JSONList(), nullable=False),
    Column("end_user", SafeText(), nullable=True),
    Column("provider_responses", JSONList(), nullable=False),
    Column("ignored_parameters", JSONList(), nullable=False),
    Column("error_message", SafeText(), nullable=True),
    Column("error_status", Integer, nullable=True),
    # The current API's grouping fields, stored as sent (migration 0004).
    Column("session_id", SafeString(256), nullable=True),
    Column("trace", JSONObject(), nullable=True),
    Column("request_metadata", JSONObject(), nullable=True),
    # What was changed to make the request: a tier clamped or mapped (migration 0004).
    Column("adjustments", JSONList(), nullable=False, server_default=text("'[]'")),
    # Images made but never handed whole to the client (it left): the operator's cost, not
    # charged (migration 0004).
    Column("undelivered_images", Integer, nullable=False, server_default=text("0")),
    # The LoRA adapters applied, `[{"name", "scale"}]` in the request's order; NULL: none
    # (migration 0005).
    Column("loras", SafeJSON(none_as_null=True), nullable=True),
    CheckConstraint("state IN ('pending', 'succeeded', 'failed', 'cancelled')", name="state"),
    CheckConstraint("api IN ('chat', 'images', 'openai_images')", name="api"),
    CheckConstraint("total_cost_micro >= 0", name="total_cost_micro"),
    Index("ix_generations_key_hash_created_at", "key_hash", "created_at"),
    Index("ix_generations_created_at", "created_at"),
)

# SQLite autoincrements only an INTEGER PRIMARY KEY (its rowid, 64-bit anyway).
LEDGER_ID = BigInteger().with_variant(Integer(), "sqlite")

key_balances = Table(
    "key_balances",
    metadata,
    # Counters kept in step with `ledger_entries` (same transactions), read without summing.
    Column(
        "key_hash",
        SafeString(64),
        ForeignKey("api_keys.hash", ondelete="CASCADE"),
        primary_key=True,
    ),
    # Start of the limit period `period_used_micro` covers; NULL: all time (no reset). When it
    # is not the current period's start, the period's usage is summed from the ledger again.
    Column("period_start", UTCDateTime, nullable=True),
    Column("period_used_micro", BigInteger, nullable=False, default=0),
    Column("reserved_micro", BigInteger, nullable=False, default=0),  # open reservations
    Column("total_used_micro", BigInteger, nullable=False, default=0),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("period_used_micro >= 0", name="period_used_micro"),
    CheckConstraint("reserved_micro >= 0", name="reserved_micro"),
    CheckConstraint("total_used_micro >= 0", name="total_used_micro"),
)

reservations = Table(
    "reservations",
    metadata,
    Column("generation_id", SafeString(64), primary_key=True),
    # No foreign key: the record outlives a deleted key, like the ledger.
    Column("key_hash", SafeString(64), nullable=False),
    Column("amount_micro", BigInteger, nullable=False),  # the request's maximum cost
    Column("state", SafeString(16), nullable=False),
    Column("settled_micro", BigInteger, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),  # the sweeper releases it after this
    Column("finished_at", UTCDateTime, nullable=True),
    CheckConstraint("state IN ('open', 'settled', 'released')", name="state"),
    CheckConstraint("amount_micro >= 0", name="amount_micro"),
    CheckConstraint("settled_micro >= 0 AND settled_micro <= amount_micro", name="settled_micro"),
    Index("ix_reservations_state_expires_at", "state", "expires_at"),
    Index("ix_reservations_key_hash", "key_hash"),
)

# Append-only: rows are inserted, never updated or deleted (database triggers refuse both).
ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", LEDGER_ID, primary_key=True, autoincrement=True),
    Column("key_hash", SafeString(64), nullable=False),
    Column("generation_id", SafeString(64), nullable=False),
    Column("kind", SafeString(16), nullable=False),
    Column("amount_micro", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint("kind IN ('reserve', 'settle', 'release')", name="kind"),
    CheckConstraint("amount_micro >= 0", name="amount_micro"),
    UniqueConstraint("generation_id", "kind"),  # exactly once per generation and kind
    Index("ix_ledger_entries_key_hash_kind_created_at", "key_hash", "kind", "created_at"),
)

rate_windows = Table(
    "rate_windows",
    metadata,
    # Fixed-window request counters shared by every process on the database.
    Column("key_hash", SafeString(64), primary_key=True),
    Column("window_start", BigInteger, primary_key=True),  # epoch seconds
    Column("count", Integer, nullable=False),
)

# One row per provider attempt (stats/): what the endpoints API's uptime, latency and
# throughput are computed from, by every gateway process alike. Pruned after a few days.
provider_outcomes = Table(
    "provider_outcomes",
    metadata,
    Column("id", LEDGER_ID, primary_key=True, autoincrement=True),
    Column("provider_slug", SafeString(200), nullable=False),
    Column("provider_name", SafeString(200), nullable=False),
    Column("model", SafeString(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),  # when the attempt ended
    Column("status", Integer, nullable=False),  # 200, or the attempt's HTTP-like error status
    # Counts against uptime: 5xx, timeouts (408/504), garbage (502); not 429 nor client 4xx.
    Column("provider_caused", Boolean, nullable=False),
    Column("latency_ms", Integer, nullable=False),  # the whole attempt, end to end
    Column("images", Integer, nullable=False),  # delivered (0 on failure)
    Column("image_tokens", Integer, nullable=False),  # delivered completion tokens
    Index("ix_provider_outcomes_provider_slug_created_at", "provider_slug", "created_at"),
    Index("ix_provider_outcomes_created_at", "created_at"),
)

# The same outcomes summed per provider, model and UTC minute, upserted in the transaction that
# inserts them: uptime windows and hourly buckets read at most a few thousand of these rows,
# however busy the providers are.
provider_outcome_minutes = Table(
    "provider_outcome_minutes",
    metadata,
    Column("provider_slug", SafeString(200), primary_key=True),
    Column("model", SafeString(200), primary_key=True),
    Column("minute", UTCDateTime, primary_key=True),  # start of the minute, UTC
    Column("successes", Integer, nullable=False),
    Column("errors", Integer, nullable=False),  # provider-caused failures
    Column("excluded", Integer, nullable=False),  # rate limits and client errors
)

# Batches (docs/batches.md): one row per batch, its items in `batch_items`. Counts and usage
# are computed from the items, so they can never disagree with them.
batches = Table(
    "batches",
    metadata,
    Column("id", SafeString(64), primary_key=True),  # batch_...
    Column("key_hash", SafeString(64), nullable=False),  # no foreign key: the record outlives it
    Column("endpoint", SafeString(64), nullable=False),  # as the client wrote it
    Column("model", SafeString(200), nullable=False),
    Column("completion_window", SafeString(8), nullable=False),
    # validating → in_progress → completed | failed | expired | cancelling → cancelled
    Column("status", SafeString(16), nullable=False),
    Column("on_payment_required", SafeString(8), nullable=False),  # "continue" or "stop"
    Column("provider", SafeString(200), nullable=True),  # the first provider that served it
    Column("callback_url", SafeText, nullable=True),
    Column("error", SafeText, nullable=True),  # why it failed, when it did
    Column("total", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),  # created_at + completion_window
    Column("finalized_at", UTCDateTime, nullable=True),  # when it reached a terminal status
    # The terminal webhook: pending → delivered | failed, tried again at `webhook_next_at`.
    Column("webhook_state", SafeString(16), nullable=True),
    Column("webhook_attempts", Integer, nullable=False, default=0),
    Column("webhook_next_at", UTCDateTime, nullable=True),
    Index("ix_batches_key_hash_created_at", "key_hash", "created_at"),
    Index("ix_batches_status", "status"),
)

batch_items = Table(
    "batch_items",
    metadata,
    Column(
        "batch_id", SafeString(64), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("idx", Integer, primary_key=True),  # its place in the submitted list
    Column("custom_id", SafeString(200), nullable=False),
    Column("body", SafeJSON(), nullable=False),  # the request body as submitted
    # queued → running → succeeded | failed | cancelled | expired
    Column("status", SafeString(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),  # the batch's: items are taken oldest first
    # A claim: the process that runs it, until when (renewed while it runs), and the
    # generation id of this run (a new one for every claim, so a run that lost its claim can
    # never close the item).
    Column("claimed_by", SafeString(64), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("generation_id", SafeString(64), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("status_code", Integer, nullable=True),
    Column("result", SafeJSON(none_as_null=True), nullable=True),  # the body, or the error
    Column("image_keys", SafeJSON(none_as_null=True), nullable=True),  # in the image store
    Column("cost_micro", BigInteger, nullable=False, default=0),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("finished_at", UTCDateTime, nullable=True),
    Index("ix_batch_items_status_created_at", "status", "created_at"),
    Index("ix_batch_items_generation_id", "generation_id"),
)
