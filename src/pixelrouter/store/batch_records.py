"""Batches (docs/batches.md), SQL only: submission, reading, their course to a terminal
status, and their webhooks. The claims on their items are `batch_claims.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update

from pixelrouter.store.db import utcnow, write_transaction
from pixelrouter.store.tables import batch_items, batches

_b = batches.c
_i = batch_items.c

# An item that is still to run, or running.
OPEN_ITEM_STATES = ("queued", "running")
# What a batch's status is once it ended.
TERMINAL_BATCH_STATES = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class NewBatch:
    id: str
    key_hash: str
    endpoint: str
    model: str
    completion_window: str
    on_payment_required: str
    callback_url: str | None
    created_at: datetime
    expires_at: datetime
    error: str | None = None  # a batch refused whole (no valid request): it ends `failed`


@dataclass(frozen=True)
class NewBatchItem:
    custom_id: str
    body: dict[str, Any]
    # Refused at submission: the error object, and the item is `failed` from the start.
    error: dict[str, Any] | None = None
    status_code: int | None = None


class BatchRecords:
    """Batch methods of `Store`."""

    engine: Engine

    # -- submission, reading ---------------------------------------------------------------

    def create_batch(self, batch: NewBatch, items: Sequence[NewBatchItem]) -> None:
        """The batch and all its items, in one transaction."""
        rows = [
            {
                "batch_id": batch.id,
                "idx": idx,
                "custom_id": item.custom_id,
                "body": item.body,
                "status": "failed" if item.error is not None else "queued",
                "created_at": batch.created_at,
                "attempts": 0,
                "status_code": item.status_code,
                "result": item.error,
                "cost_micro": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "finished_at": batch.created_at if item.error is not None else None,
            }
            for idx, item in enumerate(items)
        ]
        with write_transaction(self.engine) as conn:
            conn.execute(
                insert(batches).values(
                    id=batch.id,
                    key_hash=batch.key_hash,
                    endpoint=batch.endpoint,
                    model=batch.model,
                    completion_window=batch.completion_window,
                    status="in_progress",
                    on_payment_required=batch.on_payment_required,
                    callback_url=batch.callback_url,
                    error=batch.error,
                    total=len(rows),
                    created_at=batch.created_at,
                    expires_at=batch.expires_at,
                    webhook_attempts=0,
                )
            )
            for start in range(0, len(rows), 1000):
                conn.execute(insert(batch_items), rows[start : start + 1000])

    def batch_row(self, batch_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(batches).where(_b.id == batch_id)).mappings().first()
        return dict(row) if row is not None else None

    def list_batch_rows(
        self,
        *,
        key_hash: str | None,
        limit: int,
        after: str | None = None,
        statuses: Iterable[str] = (),
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; `after` is the id the previous page ended with. `limit + 1` rows are
        read so the caller knows whether there is more."""
        query = select(batches)
        if key_hash is not None:
            query = query.where(_b.key_hash == key_hash)
        statuses = list(statuses)
        if statuses:
            query = query.where(_b.status.in_(statuses))
        if created_after is not None:
            query = query.where(_b.created_at > created_after)
        if created_before is not None:
            query = query.where(_b.created_at < created_before)
        with self.engine.connect() as conn:
            if after is not None:
                mark = conn.execute(select(_b.created_at).where(_b.id == after)).scalar()
                if mark is not None:
                    query = query.where(
                        or_(_b.created_at < mark, and_(_b.created_at == mark, _b.id < after))
                    )
            query = query.order_by(_b.created_at.desc(), _b.id.desc()).limit(limit + 1)
            return [dict(row) for row in conn.execute(query).mappings()]

    def batch_item_counts(self, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Items per status, per batch."""
        if not batch_ids:
            return {}
        counts: dict[str, dict[str, int]] = {batch_id: {} for batch_id in batch_ids}
        query = (
            select(_i.batch_id, _i.status, func.count())
            .where(_i.batch_id.in_(list(batch_ids)))
            .group_by(_i.batch_id, _i.status)
        )
        with self.engine.connect() as conn:
            for batch_id, status, count in conn.execute(query):
                counts[batch_id][status] = int(count)
        return counts

    def batch_usage(self, batch_id: str) -> tuple[int, int, int]:
        """Prompt tokens, completion tokens and micro-dollars charged, over its items."""
        query = select(
            func.coalesce(func.sum(_i.prompt_tokens), 0),
            func.coalesce(func.sum(_i.completion_tokens), 0),
            func.coalesce(func.sum(_i.cost_micro), 0),
        ).where(_i.batch_id == batch_id)
        with self.engine.connect() as conn:
            prompt, completion, cost = conn.execute(query).one()
        return int(prompt), int(completion), int(cost)

    def batch_item_rows(self, batch_id: str, *, finished_only: bool = True) -> list[dict[str, Any]]:
        """Its items in submission order (the finished ones: their results)."""
        query = select(
            _i.idx,
            _i.custom_id,
            _i.status,
            _i.generation_id,
            _i.status_code,
            _i.result,
            _i.image_keys,
            _i.cost_micro,
        ).where(_i.batch_id == batch_id)
        if finished_only:
            query = query.where(_i.status.not_in(OPEN_ITEM_STATES))
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query.order_by(_i.idx)).mappings()]

    def delete_batch(self, batch_id: str) -> list[str]:
        """Remove a batch and its items; the image-store keys of their images (billing and
        generation records stay)."""
        with write_transaction(self.engine) as conn:
            keys: list[str] = []
            for (image_keys,) in conn.execute(
                select(_i.image_keys).where(_i.batch_id == batch_id, _i.image_keys.is_not(None))
            ):
                keys.extend(image_keys or ())
            conn.execute(delete(batch_items).where(_i.batch_id == batch_id))
            conn.execute(delete(batches).where(_b.id == batch_id))
        return keys

    # -- the batch's course ------------------------------------------------------------------

    def end_queued_items(
        self,
        batch_id: str,
        *,
        status: str,
        status_code: int,
        error: dict[str, Any],
        batch_status: str | None = None,
        batch_error: str | None = None,
    ) -> int:
        """End the items still queued (cancelled, expired, or refused for the key's limit),
        and set the batch's status or error with them, in one transaction."""
        now = utcnow()
        with write_transaction(self.engine) as conn:
            ended = conn.execute(
                update(batch_items)
                .where(_i.batch_id == batch_id, _i.status == "queued")
                .values(status=status, status_code=status_code, result=error, finished_at=now)
            ).rowcount
            values: dict[str, Any] = {}
            if batch_status is not None:
                values["status"] = batch_status
            if batch_error is not None:
                values["error"] = batch_error
            if values:
                conn.execute(
                    update(batches)
                    .where(_b.id == batch_id, _b.status.not_in(TERMINAL_BATCH_STATES))
                    .values(**values)
                )
        return int(ended)

    def expired_batch_ids(self, now: datetime) -> list[str]:
        """Batches past their completion window with items still queued."""
        query = (
            select(_b.id)
            .where(_b.status == "in_progress", _b.expires_at < now)
            .where(select(_i.idx).where(_i.batch_id == _b.id, _i.status == "queued").exists())
        )
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(query)]

    def finalize_batches(self, now: datetime) -> list[str]:
        """Give every batch that has no open item left its terminal status: `cancelled` when
        it was being cancelled, `failed` with an error, `expired` when its window closed on
        queued items, else `completed`; a batch with a `callback_url` gets its webhook due.
        The ids of the batches finalized."""
        open_items = (
            select(_i.idx).where(_i.batch_id == _b.id, _i.status.in_(OPEN_ITEM_STATES)).exists()
        )
        expired_items = select(_i.idx).where(_i.batch_id == _b.id, _i.status == "expired").exists()
        done: list[str] = []
        ending = _b.status.in_(("in_progress", "cancelling")) & ~open_items
        with self.engine.connect() as conn:  # a read first: most rounds find none
            if conn.execute(select(_b.id).where(ending).limit(1)).first() is None:
                return done
        with write_transaction(self.engine) as conn:
            rows = conn.execute(
                select(_b.id, _b.status, _b.error, _b.callback_url, expired_items.label("expired"))
                .where(ending)
                .with_for_update(skip_locked=True)
            ).all()
            for batch_id, status, error, callback_url, expired in rows:
                if status == "cancelling":
                    final = "cancelled"
                elif error is not None:
                    final = "failed"
                elif expired:
                    final = "expired"
                else:
                    final = "completed"
                conn.execute(
                    update(batches)
                    .where(_b.id == batch_id, _b.status == status)
                    .values(
                        status=final,
                        finalized_at=now,
                        webhook_state="pending" if callback_url else None,
                        webhook_next_at=now if callback_url else None,
                    )
                )
                done.append(batch_id)
        return done

    def cancel_batch(self, batch_id: str) -> bool:
        """Stop a batch: its queued items end `cancelled` and it is `cancelling` until its
        running items are done (they are charged as delivered). False if it had ended."""
        with write_transaction(self.engine) as conn:
            changed = conn.execute(
                update(batches)
                .where(_b.id == batch_id, _b.status.in_(("validating", "in_progress")))
                .values(status="cancelling")
            ).rowcount
            if changed:
                conn.execute(
                    update(batch_items)
                    .where(_i.batch_id == batch_id, _i.status == "queued")
                    .values(
                        status="cancelled",
                        status_code=499,
                        result={
                            "message": "The batch was cancelled before this request ran.",
                            "param": None,
                            "type": "batch_cancelled",
                        },
                        finished_at=utcnow(),
                    )
                )
        return bool(changed)

    # -- webhooks ------------------------------------------------------------------------------

    def due_webhooks(self, now: datetime, limit: int = 16) -> list[str]:
        query = (
            select(_b.id)
            .where(_b.webhook_state == "pending", _b.webhook_next_at <= now)
            .order_by(_b.webhook_next_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(query)]

    def take_webhook(self, batch_id: str, now: datetime, retry_at: datetime) -> int | None:
        """Claim a due webhook for one try (another process will not try it before
        `retry_at`); the number of this try, or None when it is not due any more."""
        with write_transaction(self.engine) as conn:
            row = conn.execute(
                update(batches)
                .where(
                    _b.id == batch_id,
                    _b.webhook_state == "pending",
                    _b.webhook_next_at <= now,
                )
                .values(webhook_attempts=_b.webhook_attempts + 1, webhook_next_at=retry_at)
                .returning(_b.webhook_attempts)
            ).first()
        return int(row[0]) if row is not None else None

    def webhook_done(self, batch_id: str, state: str) -> None:
        """`delivered`, or `failed` once every try failed."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(batches)
                .where(_b.id == batch_id)
                .values(webhook_state=state, webhook_next_at=None)
            )

    def retry_webhook_at(self, batch_id: str, when: datetime) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(batches)
                .where(_b.id == batch_id, _b.webhook_state == "pending")
                .values(webhook_next_at=when)
            )
