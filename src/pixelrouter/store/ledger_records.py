"""The billing ledger: reserve a generation's maximum cost, settle or release it exactly once.

Every change appends `ledger_entries` rows and moves the key's `key_balances` counters in the
same transaction, so the counters always equal what the ledger sums to. A reservation is one
conditional UPDATE of the key's balance row: under PostgreSQL READ COMMITTED the row lock
makes concurrent reservations queue and re-check the limit on the newest row, and SQLite's
BEGIN IMMEDIATE runs them one at a time, so settled cost never exceeds the limit.

On PostgreSQL the common case of each change is one statement (`pg_ledger`: a data-modifying
CTE, one round trip, one lock of the balance row, held to COMMIT): a reservation on a balance
row already in the current period, a settlement or release of an open reservation. Anything
else (the key's first reservation, the first change of a new period, a refusal, an unknown key
or generation) falls back to the step-by-step statements here, which SQLite always runs, in
the same transaction.

The balance row's counters, the statements that move them and the query that reads them are
in `balance_records`; this module keeps the reservations and the ledger's own rows.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from pixelrouter.periods import check_aware, check_micro, limit_period_start
from pixelrouter.store import pg_ledger
from pixelrouter.store.balance_records import (
    lock_balance,
    release_counters,
    reserve_statement,
    settle_counters,
    settle_statement,
    sum_micro,
)
from pixelrouter.store.db import utcnow, write_transaction
from pixelrouter.store.records import LedgerEntry, Reservation
from pixelrouter.store.tables import api_keys, ledger_entries, reservations

_entry = ledger_entries.c
_reservation = reservations.c

# The fixed statements of a reservation and a settlement, built once with bound parameters:
# building one from literals on every call (and its cache key) cost more than running it. An
# UPDATE's parameters are named `b_...`: a column's own name is reserved for its SET value
# (the balance row's statements, in `balance_records`, are built the same way).
_KEY_LIMIT = select(api_keys.c.limit_micro, api_keys.c.limit_reset).where(
    api_keys.c.hash == bindparam("key_hash")
)
_RESERVATION_ID = select(_reservation.generation_id).where(
    _reservation.generation_id == bindparam("generation_id")
)
_RESERVATION_AMOUNT = select(_reservation.amount_micro).where(
    _reservation.generation_id == bindparam("generation_id")
)
_SETTLE_RESERVATION = (
    update(reservations)
    .where(
        _reservation.generation_id == bindparam("b_generation_id"),
        _reservation.state == "open",
        _reservation.amount_micro >= bindparam("b_delivered_micro"),
    )
    .values(
        state="settled",
        settled_micro=bindparam("b_delivered_micro"),
        finished_at=bindparam("b_now"),
    )
    .returning(_reservation.key_hash, _reservation.amount_micro)
)


def _is_postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


class LedgerRecords:
    """Ledger methods of `Store`: each is one short transaction, safe under any concurrency."""

    engine: Engine

    def reserve(
        self,
        *,
        generation_id: str,
        key_hash: str,
        amount_micro: int,
        expires_at: datetime,
        now: datetime | None = None,
        tx: Connection | None = None,
    ) -> Reservation | None:
        """Hold `amount_micro` against the key's limit for this generation, atomically.

        Returns None when the limit (in the period holding `now`) cannot cover it. A second
        reservation for the same generation is a ValueError, as is an unknown key.
        """
        check_micro("amount_micro", amount_micro)
        check_aware("expires_at", expires_at)
        now = check_aware("now", now or utcnow())
        row: dict[str, Any] = {
            "generation_id": generation_id,
            "key_hash": key_hash,
            "amount_micro": amount_micro,
            "state": "open",
            "settled_micro": 0,
            "created_at": now,
            "expires_at": expires_at,
            "finished_at": None,
        }
        alone = tx is None and self.engine.dialect.name == "postgresql"
        if alone and pg_ledger.reserve_alone(self.engine, row):
            return Reservation(**row)
        with write_transaction(self.engine, tx) as conn:
            if tx is not None and _is_postgresql(conn) and pg_ledger.reserve_in(conn, row):
                return Reservation(**row)
            key = conn.execute(_KEY_LIMIT, {"key_hash": key_hash}).first()
            if key is None:
                raise ValueError(f"no key with hash {key_hash!r}")
            start = limit_period_start(key.limit_reset, now)
            lock_balance(conn, key_hash, start, now)
            if _reservation_exists(conn, generation_id):
                raise ValueError(f"generation {generation_id} already has a reservation")
            limited = key.limit_micro is not None
            params: dict[str, Any] = {
                "b_key_hash": key_hash,
                "b_amount": amount_micro,
                "b_now": now,
            }
            if start is not None:
                params["b_start"] = start
            if limited:
                params["b_limit"] = int(key.limit_micro)
            stmt = reserve_statement(start is not None, limited)
            if conn.execute(stmt, params).rowcount != 1:
                return None
            try:
                conn.execute(insert(reservations), row)
            except IntegrityError as exc:  # the same id reserved at once on another key
                raise ValueError(f"generation {generation_id} already has a reservation") from exc
            _append(conn, [(key_hash, generation_id, "reserve", amount_micro)], now)
        return Reservation(**row)

    def settle(
        self,
        generation_id: str,
        delivered_micro: int,
        now: datetime | None = None,
        tx: Connection | None = None,
    ) -> bool:
        """Charge what was delivered and release the rest, exactly once per generation.

        True if this call settled it; False if it was not open (already settled, released or
        swept, or never reserved): then nothing is charged. Usage counts in the period holding
        `now`. More than was reserved is a ValueError.
        """
        check_micro("delivered_micro", delivered_micro)
        now = check_aware("now", now or utcnow())
        if tx is None and self.engine.dialect.name == "postgresql":
            done = pg_ledger.close_alone(
                self.engine, generation_id, delivered_micro, now, "settled"
            )
            if done is not None:
                return done
        with write_transaction(self.engine, tx) as conn:
            if tx is not None and _is_postgresql(conn):
                return _pg_close(conn, generation_id, delivered_micro, now, "settled")
            closed = conn.execute(
                _SETTLE_RESERVATION,
                {
                    "b_generation_id": generation_id,
                    "b_delivered_micro": delivered_micro,
                    "b_now": now,
                },
            ).first()
            if closed is None:
                amount = conn.scalar(_RESERVATION_AMOUNT, {"generation_id": generation_id})
                if amount is not None and delivered_micro > amount:
                    raise ValueError(
                        f"cannot settle {delivered_micro} µ$ for generation {generation_id}: "
                        f"only {amount} µ$ were reserved"
                    )
                return False
            key_hash, amount = closed.key_hash, int(closed.amount_micro)
            if delivered_micro == 0:
                _append_release(conn, [(key_hash, generation_id, amount)], now)
                return True
            _append(
                conn,
                [
                    (key_hash, generation_id, "settle", delivered_micro),
                    (key_hash, generation_id, "release", amount - delivered_micro),
                ],
                now,
            )
            settle_counters(conn, key_hash, delivered_micro, amount, now)
        return True

    def charge(
        self,
        *,
        generation_id: str,
        key_hash: str,
        amount_micro: int,
        now: datetime | None = None,
        tx: Connection | None = None,
    ) -> bool:
        """Charge a generation that was admitted without a reservation (its key had no limit
        then), exactly once: a reservation of the amount settled at once, whatever limit the
        key has now (a limit applies to what is admitted after it is set). A key deleted
        meanwhile still gets its ledger rows, as its generations keep their records.

        True if this call charged it; False if the generation was already charged."""
        check_micro("amount_micro", amount_micro)
        now = check_aware("now", now or utcnow())
        with write_transaction(self.engine, tx) as conn:
            if _reservation_exists(conn, generation_id):
                return False
            row: dict[str, Any] = {
                "generation_id": generation_id,
                "key_hash": key_hash,
                "amount_micro": amount_micro,
                "state": "settled",
                "settled_micro": amount_micro,
                "created_at": now,
                "expires_at": now,
                "finished_at": now,
            }
            conn.execute(insert(reservations), row)
            _append(
                conn,
                [
                    (key_hash, generation_id, "reserve", amount_micro),
                    (key_hash, generation_id, "settle", amount_micro),
                    (key_hash, generation_id, "release", 0),
                ],
                now,
            )
            key = conn.execute(_KEY_LIMIT, {"key_hash": key_hash}).first()
            if key is None:
                return True  # deleted: its counters went with it; the ledger keeps the charge
            start = limit_period_start(key.limit_reset, now)
            lock_balance(conn, key_hash, start, now)
            params: dict[str, Any] = {"b_key_hash": key_hash, "b_now": now}
            if start is not None:
                params["b_start"] = start
            # The counters move as a reservation and its settlement would move them.
            conn.execute(
                reserve_statement(start is not None, False), {**params, "b_amount": amount_micro}
            )
            conn.execute(
                settle_statement(start is not None),
                {**params, "b_delivered": amount_micro, "b_reserved": amount_micro},
            )
        return True

    def release(
        self, generation_id: str, now: datetime | None = None, tx: Connection | None = None
    ) -> bool:
        """Give back the whole reservation (nothing delivered); False if it was not open."""
        now = check_aware("now", now or utcnow())
        if tx is None and self.engine.dialect.name == "postgresql":
            done = pg_ledger.close_alone(self.engine, generation_id, 0, now, "released")
            if done is not None:
                return done
        with write_transaction(self.engine, tx) as conn:
            if tx is not None and _is_postgresql(conn):
                return _pg_close(conn, generation_id, 0, now, "released")
            closed = conn.execute(
                update(reservations)
                .where(_reservation.generation_id == generation_id, _reservation.state == "open")
                .values(state="released", settled_micro=0, finished_at=now)
                .returning(_reservation.key_hash, _reservation.amount_micro)
            ).first()
            if closed is None:
                return False
            _append_release(conn, [(closed.key_hash, generation_id, closed.amount_micro)], now)
        return True

    def sweep_reservations(self, now: datetime | None = None) -> int:
        """Release every open reservation whose `expires_at` has passed (left by a crash)."""
        now = check_aware("now", now or utcnow())
        with write_transaction(self.engine) as conn:
            swept = conn.execute(
                update(reservations)
                .where(_reservation.state == "open", _reservation.expires_at <= now)
                .values(state="released", settled_micro=0, finished_at=now)
                .returning(
                    _reservation.key_hash, _reservation.generation_id, _reservation.amount_micro
                )
            ).all()
            if swept:
                _append_release(
                    conn, [(r.key_hash, r.generation_id, int(r.amount_micro)) for r in swept], now
                )
        return len(swept)

    def get_reservation(self, generation_id: str) -> Reservation | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(reservations).where(_reservation.generation_id == generation_id)
            ).first()
        return None if row is None else _reservation_record(row)

    def open_reservations(self, key_hash: str | None = None) -> list[Reservation]:
        """Open reservations (of one key or all), oldest first."""
        stmt = (
            select(reservations)
            .where(_reservation.state == "open")
            .order_by(_reservation.created_at, _reservation.generation_id)
        )
        if key_hash is not None:
            stmt = stmt.where(_reservation.key_hash == key_hash)
        with self.engine.connect() as conn:
            return [_reservation_record(row) for row in conn.execute(stmt)]

    def ledger_total(self, key_hash: str | None = None) -> int:
        """Micro-dollars settled (charged), of one key or of all keys."""
        stmt = select(sum_micro(_entry.amount_micro)).where(_entry.kind == "settle")
        if key_hash is not None:
            stmt = stmt.where(_entry.key_hash == key_hash)
        with self.engine.connect() as conn:
            return int(conn.scalar(stmt) or 0)

    def ledger_entries(
        self, *, key_hash: str | None = None, generation_id: str | None = None
    ) -> list[LedgerEntry]:
        """Ledger rows in the order they were appended (for audits and tests)."""
        stmt = select(ledger_entries).order_by(_entry.id)
        if key_hash is not None:
            stmt = stmt.where(_entry.key_hash == key_hash)
        if generation_id is not None:
            stmt = stmt.where(_entry.generation_id == generation_id)
        with self.engine.connect() as conn:
            return [
                LedgerEntry(
                    id=int(row.id),
                    key_hash=row.key_hash,
                    generation_id=row.generation_id,
                    kind=row.kind,
                    amount_micro=int(row.amount_micro),
                    created_at=row.created_at,
                )
                for row in conn.execute(stmt)
            ]


def _pg_close(
    conn: Connection, generation_id: str, delivered_micro: int, now: datetime, state: str
) -> bool:
    """PostgreSQL's one-statement settle or release in the caller's transaction; a balance row
    of another period gets its counters moved here, the long way."""
    closed = pg_ledger.close_in(conn, generation_id, delivered_micro, now, state)
    if not pg_ledger.checked_close(generation_id, delivered_micro, closed.key_hash, closed.stored):
        return False
    if not closed.moved and delivered_micro > 0:
        # The balance row is in another period (or gone): the ledger entries are in; move the
        # counters the long way, summing the new period from the ledger under the row lock.
        settle_counters(conn, closed.key_hash, delivered_micro, int(closed.amount), now)
    return True


def _reservation_exists(conn: Connection, generation_id: str) -> bool:
    return conn.scalar(_RESERVATION_ID, {"generation_id": generation_id}) is not None


def _append(conn: Connection, entries: list[tuple[str, str, str, int]], now: datetime) -> None:
    """Append ledger rows `(key_hash, generation_id, kind, amount_micro)`: never an update."""
    conn.execute(
        insert(ledger_entries),
        [
            {
                "key_hash": key_hash,
                "generation_id": generation_id,
                "kind": kind,
                "amount_micro": amount,
                "created_at": now,
            }
            for key_hash, generation_id, kind, amount in entries
        ],
    )


def _append_release(conn: Connection, closed: list[tuple[str, str, int]], now: datetime) -> None:
    """Record reservations `(key_hash, generation_id, amount)` closed with nothing delivered: a
    zero settlement and the whole amount released; only the reserved counters move."""
    _append(
        conn,
        [
            entry
            for key_hash, generation_id, amount in closed
            for entry in (
                (key_hash, generation_id, "settle", 0),
                (key_hash, generation_id, "release", amount),
            )
        ],
        now,
    )
    released: defaultdict[str, int] = defaultdict(int)
    for key_hash, _, amount in closed:
        released[key_hash] += amount
    release_counters(conn, released, now)


def _reservation_record(row: Row[Any]) -> Reservation:
    m = row._mapping
    return Reservation(
        generation_id=m["generation_id"],
        key_hash=m["key_hash"],
        amount_micro=int(m["amount_micro"]),
        state=m["state"],
        settled_micro=int(m["settled_micro"]),
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        finished_at=m["finished_at"],
    )
