"""The claims on batch items (docs/batches.md, "Exactly once"), SQL only.

An item is claimed by one gateway process at a time: the claim sets who runs it, until when
(a lease, renewed while it runs) and a new generation id. A process that dies stops renewing,
and any process puts its items back in the queue once the lease is over
(`requeue_lost_items`). An item is closed only by the run that holds its current generation
id (`finish_batch_item`, in the transaction that charges it), so a run that lost its claim can
never close it, and a delivered item is charged exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, or_, select, update

from pixelrouter.store.db import utcnow, write_transaction
from pixelrouter.store.tables import batch_items, batches

_b = batches.c
_i = batch_items.c


@dataclass(frozen=True)
class ClaimedItem:
    batch_id: str
    idx: int
    custom_id: str
    body: dict[str, Any]
    generation_id: str
    key_hash: str
    endpoint: str
    model: str
    on_payment_required: str
    attempts: int  # this claim included


def _lost(now: datetime, worker: str | None) -> Any:
    """Running items whose claim is over: past their lease, or all of a stopping `worker`."""
    return _i.claimed_by == worker if worker is not None else _i.lease_until < now


def _held(batch_id: str, idx: int, generation_id: str) -> Any:
    """The item, while the run `generation_id` still holds its claim."""
    return and_(
        _i.batch_id == batch_id,
        _i.idx == idx,
        _i.status == "running",
        _i.generation_id == generation_id,
    )


class BatchClaims:
    """Batch-item claim methods of `Store`."""

    engine: Engine

    def claim_batch_items(
        self, worker: str, count: int, lease_until: datetime, generation_ids: Iterable[str]
    ) -> list[ClaimedItem]:
        """Take up to `count` queued items, oldest batch first, for `worker` until
        `lease_until`, each with a new generation id. On PostgreSQL rows another process is
        claiming are skipped (`FOR UPDATE SKIP LOCKED`); SQLite writes one at a time."""
        ids = iter(generation_ids)
        with write_transaction(self.engine) as conn:
            picked = conn.execute(
                select(_i.batch_id, _i.idx)
                .where(_i.status == "queued")
                .order_by(_i.created_at, _i.batch_id, _i.idx)
                .limit(count)
                .with_for_update(skip_locked=True)
            ).all()
            if not picked:
                return []
            claimed: list[tuple[str, int, str]] = []
            for batch_id, idx in picked:
                generation_id = next(ids)
                conn.execute(
                    update(batch_items)
                    .where(_i.batch_id == batch_id, _i.idx == idx)
                    .values(
                        status="running",
                        claimed_by=worker,
                        lease_until=lease_until,
                        generation_id=generation_id,
                        attempts=_i.attempts + 1,
                    )
                )
                claimed.append((batch_id, idx, generation_id))
            keys = [(batch_id, idx) for batch_id, idx, _ in claimed]
            rows = conn.execute(
                select(
                    _i.batch_id,
                    _i.idx,
                    _i.custom_id,
                    _i.body,
                    _b.key_hash,
                    _b.endpoint,
                    _b.model,
                    _b.on_payment_required,
                    _i.attempts,
                )
                .join(batches, _b.id == _i.batch_id)
                .where(or_(*(and_(_i.batch_id == b, _i.idx == i) for b, i in keys)))
            ).all()
        by_key = {(row.batch_id, row.idx): row for row in rows}
        return [
            ClaimedItem(
                batch_id=batch_id,
                idx=idx,
                custom_id=by_key[batch_id, idx].custom_id,
                body=by_key[batch_id, idx].body,
                generation_id=generation_id,
                key_hash=by_key[batch_id, idx].key_hash,
                endpoint=by_key[batch_id, idx].endpoint,
                model=by_key[batch_id, idx].model,
                on_payment_required=by_key[batch_id, idx].on_payment_required,
                attempts=by_key[batch_id, idx].attempts,
            )
            for batch_id, idx, generation_id in claimed
        ]

    def renew_batch_leases(
        self, worker: str, generation_ids: Sequence[str], until: datetime
    ) -> None:
        """Keep this worker's running items claimed."""
        if not generation_ids:
            return
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(batch_items)
                .where(
                    _i.status == "running",
                    _i.claimed_by == worker,
                    _i.generation_id.in_(list(generation_ids)),
                )
                .values(lease_until=until)
            )

    def has_queued_items(self) -> bool:
        """Whether any item waits (a read: idle runners look before they take the write lock)."""
        with self.engine.connect() as conn:
            return (
                conn.execute(select(_i.idx).where(_i.status == "queued").limit(1)).first()
                is not None
            )

    def has_lost_items(self, now: datetime, *, worker: str | None = None) -> bool:
        """Whether `requeue_lost_items` would find any (a read, before the write lock)."""
        query = select(_i.idx).where(_i.status == "running", _lost(now, worker)).limit(1)
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def requeue_lost_items(
        self, now: datetime, tx: Connection | None = None, *, worker: str | None = None
    ) -> list[str]:
        """Put running items whose lease is over (their process died or lost the database)
        back in the queue, or, given a `worker`, that worker's running items (it is stopping);
        the generation ids of those runs, whose reservations the caller releases in the same
        transaction."""
        lost_now = _lost(now, worker)
        with write_transaction(self.engine, tx) as conn:
            lost = conn.execute(
                select(_i.batch_id, _i.idx, _i.generation_id)
                .where(_i.status == "running", lost_now)
                .with_for_update(skip_locked=True)
            ).all()
            for batch_id, idx, _ in lost:
                conn.execute(
                    update(batch_items)
                    .where(_i.batch_id == batch_id, _i.idx == idx, _i.status == "running")
                    .values(status="queued", claimed_by=None, lease_until=None, generation_id=None)
                )
        return [generation_id for _, _, generation_id in lost if generation_id]

    def unclaim_batch_item(self, batch_id: str, idx: int, generation_id: str) -> bool:
        """Put an item this run holds back in the queue (a failure that may pass: no provider
        ready, an upstream down); False if the run no longer held it."""
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(batch_items)
                .where(_held(batch_id, idx, generation_id))
                .values(status="queued", claimed_by=None, lease_until=None, generation_id=None)
            ).rowcount
        return bool(done)

    def finish_batch_item(
        self,
        batch_id: str,
        idx: int,
        generation_id: str,
        *,
        status: str,
        status_code: int,
        result: dict[str, Any],
        image_keys: Sequence[str] = (),
        cost_micro: int = 0,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        provider: str | None = None,
        tx: Connection | None = None,
    ) -> bool:
        """Close a running item, if this run (`generation_id`) still holds it; False if not
        (its lease ran out and it went back to the queue, or the batch was cancelled)."""
        now = utcnow()
        with write_transaction(self.engine, tx) as conn:
            done = conn.execute(
                update(batch_items)
                .where(_held(batch_id, idx, generation_id))
                .values(
                    status=status,
                    status_code=status_code,
                    result=result,
                    image_keys=list(image_keys) or None,
                    cost_micro=cost_micro,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    finished_at=now,
                    lease_until=None,  # `claimed_by` stays: the process that ran it
                )
            ).rowcount
            if done and provider is not None:
                conn.execute(
                    update(batches)
                    .where(_b.id == batch_id, _b.provider.is_(None))
                    .values(provider=provider)
                )
        return bool(done)
