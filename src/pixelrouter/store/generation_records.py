"""Generation rows: insert at admission, finalise exactly once, read back, sweep abandoned ones."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Update, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from pixelrouter.store.db import utcnow, write_transaction
from pixelrouter.store.records import (
    FINISHED_STATES,
    GENERATION_APIS,
    GenerationRecord,
    GenerationState,
    NewGeneration,
)
from pixelrouter.store.tables import generations

ABANDONED_MESSAGE = (
    "outcome unknown: the server that ran this generation stopped before closing it; "
    "nothing was charged"
)


class GenerationRecords:
    """Generation methods of `Store`."""

    engine: Engine

    def start_generation(
        self, rec: NewGeneration, tx: Connection | None = None
    ) -> GenerationRecord:
        """Insert a `pending` generation; a duplicate id is a ValueError."""
        row = pending_row(rec)
        try:
            with write_transaction(self.engine, tx) as conn:
                conn.execute(insert(generations), row)
        except IntegrityError as exc:
            raise ValueError(f"generation {rec.id} already exists") from exc
        return _generation_record(row)

    def finish_generation(
        self,
        id: str,
        *,
        state: GenerationState,
        total_cost_micro: int = 0,
        num_images: int = 0,
        finished_at: datetime | None = None,
        cancelled: bool | None = None,
        model: str | None = None,
        provider_name: str | None = None,
        provider_slug: str | None = None,
        latency_ms: int | None = None,
        generation_time_ms: int | None = None,
        finish_reason: str | None = None,
        tokens_prompt: int | None = None,
        tokens_completion: int | None = None,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        provider_responses: Sequence[Mapping[str, Any]] | None = None,
        error_message: str | None = None,
        error_status: int | None = None,
        undelivered_images: int | None = None,
        tx: Connection | None = None,
    ) -> bool:
        """Finalise a pending generation; True if this call did it, False if it was not pending.

        Fields passed as None keep what the row holds (what `start_generation` stored).
        `provider_responses` items: `{"provider_name", "status", "latency" (ms)}`.
        """
        values = finish_values(
            state=state,
            total_cost_micro=total_cost_micro,
            num_images=num_images,
            finished_at=finished_at,
            cancelled=cancelled,
            provider_responses=provider_responses,
            model=model,
            provider_name=provider_name,
            provider_slug=provider_slug,
            latency_ms=latency_ms,
            generation_time_ms=generation_time_ms,
            finish_reason=finish_reason,
            tokens_prompt=tokens_prompt,
            tokens_completion=tokens_completion,
            seed=seed,
            width=width,
            height=height,
            error_message=error_message,
            error_status=error_status,
            undelivered_images=undelivered_images,
        )
        stmt = _finish_statement(tuple(values))
        params = {f"new_{name}": value for name, value in values.items()}
        with write_transaction(self.engine, tx) as conn:
            return conn.execute(stmt, {"finished_id": id, **params}).rowcount == 1

    def get_generation(self, id: str) -> GenerationRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(generations).where(generations.c.id == id)).first()
        return None if row is None else _generation_record(row._mapping)

    def list_generations(
        self, key_hash: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[GenerationRecord]:
        """Generations, newest first, of one key or of all."""
        stmt = (
            select(generations)
            .order_by(generations.c.created_at.desc(), generations.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        if key_hash is not None:
            stmt = stmt.where(generations.c.key_hash == key_hash)
        with self.engine.connect() as conn:
            return [_generation_record(row._mapping) for row in conn.execute(stmt)]

    def mark_stale_pending(
        self,
        older_than: datetime,
        *,
        state: GenerationState = "failed",
        now: datetime | None = None,
        error_message: str = ABANDONED_MESSAGE,
    ) -> int:
        """Finalise generations still pending that started before `older_than` (after a crash).

        They delivered nothing, so they cost nothing. Returns how many were finalised.
        """
        if state not in ("failed", "cancelled"):
            raise ValueError("abandoned generations end as failed or cancelled")
        stmt = (
            update(generations)
            .where(generations.c.state == "pending", generations.c.created_at < older_than)
            .values(
                state=state,
                total_cost_micro=0,
                num_images=0,
                finished_at=now or utcnow(),
                cancelled=state == "cancelled",
                finish_reason="outcome_unknown" if state == "failed" else "cancelled",
                error_message=error_message,
            )
        )
        with write_transaction(self.engine) as conn:
            return conn.execute(stmt).rowcount


def pending_row(rec: NewGeneration) -> dict[str, Any]:
    """The `generations` row of a new `pending` generation (`start_generation`)."""
    if rec.api not in GENERATION_APIS:
        raise ValueError(f"unknown api {rec.api!r}; expected one of {', '.join(GENERATION_APIS)}")
    row: dict[str, Any] = {
        "id": rec.id,
        "key_hash": rec.key_hash,
        "api": rec.api,
        "model": rec.model,
        "state": "pending",
        "total_cost_micro": 0,
        "created_at": rec.created_at or utcnow(),
        "streamed": rec.streamed,
        "cancelled": False,
        "tokens_prompt": rec.tokens_prompt,
        "num_images": 0,
        "n": rec.n,
        "width": rec.width,
        "height": rec.height,
        "seed": rec.seed,
        "http_referer": rec.http_referer,
        "app_title": rec.app_title,
        "app_categories": list(rec.app_categories),
        "end_user": rec.user,
        "provider_responses": [],
        "ignored_parameters": list(rec.ignored_parameters),
    }
    # Columns of migration 0004, written only when set (their defaults are NULL and []).
    optional = {
        "session_id": rec.session_id,
        "trace": dict(rec.trace) if rec.trace else None,
        "request_metadata": dict(rec.metadata) if rec.metadata else None,
        "adjustments": list(rec.adjustments) or None,
    }
    row.update((name, value) for name, value in optional.items() if value is not None)
    if rec.loras:  # migration 0005; NULL without adapters
        row["loras"] = [dict(item) for item in rec.loras]
    return row


_FINISH_OPTIONAL = frozenset(
    {
        "model",
        "provider_name",
        "provider_slug",
        "latency_ms",
        "generation_time_ms",
        "finish_reason",
        "tokens_prompt",
        "tokens_completion",
        "seed",
        "width",
        "height",
        "error_message",
        "error_status",
        "undelivered_images",
    }
)


def finish_values(
    *,
    state: GenerationState,
    total_cost_micro: int = 0,
    num_images: int = 0,
    finished_at: datetime | None = None,
    cancelled: bool | None = None,
    provider_responses: Sequence[Mapping[str, Any]] | None = None,
    **optional: Any,
) -> dict[str, Any]:
    """The columns `finish_generation` sets (its arguments; the `optional` ones only when not
    None)."""
    if state not in FINISHED_STATES:
        raise ValueError(f"a finished state is one of {', '.join(FINISHED_STATES)}")
    if (
        isinstance(total_cost_micro, bool)
        or not isinstance(total_cost_micro, int)
        or total_cost_micro < 0
    ):
        raise ValueError("total_cost_micro must be a non-negative integer of micro-dollars")
    unknown = set(optional) - _FINISH_OPTIONAL
    if unknown:
        raise TypeError(f"finish_generation() got unexpected fields {sorted(unknown)}")
    values: dict[str, Any] = {
        "state": state,
        "total_cost_micro": total_cost_micro,
        "num_images": num_images,
        "finished_at": finished_at or utcnow(),
        "cancelled": state == "cancelled" if cancelled is None else cancelled,
    }
    values.update({name: value for name, value in optional.items() if value is not None})
    if provider_responses is not None:
        values["provider_responses"] = [dict(item) for item in provider_responses]
    return values


@functools.lru_cache(maxsize=256)
def _finish_statement(columns: tuple[str, ...]) -> Update:
    """The UPDATE that finalises a pending generation, setting `columns`: built once per set
    of columns, with bound parameters (`finished_id`, `new_<column>`), not from literals on
    every call."""
    return (
        update(generations)
        .where(generations.c.id == bindparam("finished_id"), generations.c.state == "pending")
        .values({name: bindparam(f"new_{name}") for name in columns})
    )


def _generation_record(m: Mapping[Any, Any]) -> GenerationRecord:
    return GenerationRecord(
        id=m["id"],
        key_hash=m["key_hash"],
        api=m["api"],
        model=m["model"],
        state=m["state"],
        created_at=m["created_at"],
        n=int(m["n"]),
        provider_name=m.get("provider_name"),
        provider_slug=m.get("provider_slug"),
        total_cost_micro=int(m["total_cost_micro"]),
        finished_at=m.get("finished_at"),
        latency_ms=m.get("latency_ms"),
        generation_time_ms=m.get("generation_time_ms"),
        streamed=bool(m["streamed"]),
        cancelled=bool(m["cancelled"]),
        finish_reason=m.get("finish_reason"),
        tokens_prompt=m.get("tokens_prompt"),
        tokens_completion=m.get("tokens_completion"),
        num_images=int(m["num_images"]),
        width=m.get("width"),
        height=m.get("height"),
        seed=None if m.get("seed") is None else int(m["seed"]),
        http_referer=m.get("http_referer"),
        app_title=m.get("app_title"),
        app_categories=tuple(m["app_categories"] or ()),
        user=m.get("end_user"),
        provider_responses=tuple(m["provider_responses"] or ()),
        ignored_parameters=tuple(m["ignored_parameters"] or ()),
        error_message=m.get("error_message"),
        error_status=m.get("error_status"),
        session_id=m.get("session_id"),
        trace=m.get("trace"),
        metadata=m.get("request_metadata"),
        adjustments=tuple(m.get("adjustments") or ()),
        undelivered_images=int(m.get("undelivered_images") or 0),
        loras=tuple(m.get("loras") or ()),
    )
