"""A key's balance row: its reserved, period and total counters, and the statements that move them.

`key_balances` holds one row per key that ever reserved: what is reserved now, what was settled
in the key's current limit period (`period_start`: None when its limit never resets) and in
all. The ledger (`ledger_records`) appends its entries and moves these counters in the same
transaction, through the statements here, so the counters always equal what the ledger sums
to; a counter of an earlier period is replaced, under the row's lock, by the ledger's sum since
the new period started.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Update,
    bindparam,
    case,
    cast,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from pixelrouter.keys import period_end
from pixelrouter.periods import check_aware, limit_period_start
from pixelrouter.store.db import utcnow
from pixelrouter.store.records import KeyBalance
from pixelrouter.store.tables import (
    UTCDateTime,
    api_keys,
    key_balances,
    ledger_entries,
    reservations,
)

_balance = key_balances.c
_entry = ledger_entries.c
_reservation = reservations.c


_KEY_RESET = select(api_keys.c.limit_reset).where(api_keys.c.hash == bindparam("key_hash"))
_HOLD_BALANCE = (
    select(_balance.key_hash).where(_balance.key_hash == bindparam("key_hash")).with_for_update()
)


class BalanceRecords:
    """Balance methods of `Store`."""

    engine: Engine

    def key_balance(self, key_hash: str, now: datetime | None = None) -> KeyBalance:
        """The key's counters; `period_used` is for its limit period holding `now`."""
        now = check_aware("now", now or utcnow())
        with self.engine.connect() as conn:
            reset = conn.scalar(_KEY_RESET, {"key_hash": key_hash})
            start = limit_period_start(reset, now)
            end = None if reset is None else period_end(reset, now)
            in_period = _settled(key_hash, start, end)
            row = conn.execute(
                select(
                    case((_same_period(start), _balance.period_used_micro), else_=in_period),
                    _balance.reserved_micro,
                    _balance.total_used_micro,
                ).where(_balance.key_hash == key_hash)
            ).first()
            if row is None:  # never reserved (or the key is gone): what the ledger says
                row = conn.execute(
                    select(in_period, _open_sum(key_hash), _settled(key_hash, None))
                ).one()
        period_used, reserved, total_used = (int(value) for value in row)
        return KeyBalance(period_used=period_used, reserved=reserved, total_used=total_used)


def settle_counters(
    conn: Connection, key_hash: str, delivered_micro: int, reserved_micro: int, now: datetime
) -> None:
    """Move the balance counters of a settlement whose ledger entries are already appended."""
    reset = conn.scalar(_KEY_RESET, {"key_hash": key_hash})
    start = limit_period_start(reset, now)
    # Hold the row before summing the ledger: a later statement then sees every settlement
    # committed for this key (READ COMMITTED takes a snapshot per statement).
    conn.execute(_HOLD_BALANCE, {"key_hash": key_hash})
    params = {
        "b_key_hash": key_hash,
        "b_delivered": delivered_micro,
        "b_reserved": reserved_micro,
        "b_now": now,
    }
    if start is not None:
        params["b_start"] = start
    conn.execute(settle_statement(start is not None), params)


def release_counters(conn: Connection, released: Mapping[str, int], now: datetime) -> None:
    """Take reservations closed with nothing delivered, `{key_hash: amount}`, off the keys'
    reserved counters; the period and total counters do not move."""
    for key_hash in sorted(released):  # one lock order for every transaction
        conn.execute(
            update(key_balances)
            .where(_balance.key_hash == key_hash)
            .values(reserved_micro=_balance.reserved_micro - released[key_hash], updated_at=now)
        )


def sum_micro(column: Any) -> ColumnElement[int]:
    """SUM as a bigint, 0 when there are no rows (PostgreSQL sums bigints as numeric)."""
    return cast(func.coalesce(func.sum(column), 0), BigInteger)


def _settled(key_hash: str, start: datetime | None, end: datetime | None = None) -> Any:
    """Scalar subquery: the key's settled micro-dollars from `start` (None: all time)."""
    stmt = select(sum_micro(_entry.amount_micro)).where(
        _entry.key_hash == key_hash, _entry.kind == "settle"
    )
    if start is not None:
        stmt = stmt.where(_entry.created_at >= start)
    if end is not None:
        stmt = stmt.where(_entry.created_at < end)
    return stmt.scalar_subquery()


def _open_sum(key_hash: str) -> Any:
    return (
        select(sum_micro(_reservation.amount_micro))
        .where(_reservation.key_hash == key_hash, _reservation.state == "open")
        .scalar_subquery()
    )


def _same_period(start: datetime | None) -> ColumnElement[bool]:
    """Whether the balance row's counter is for the period starting at `start`."""
    return _balance.period_start.is_(None) if start is None else _balance.period_start == start


def _balance_params(periodic: bool) -> tuple[Any, Any, Any]:
    """Bound parameters of a balance update: the key, the period's start (None: the key's
    limit never resets) and now."""
    start = bindparam("b_start", type_=UTCDateTime()) if periodic else None
    return bindparam("b_key_hash"), start, bindparam("b_now", type_=UTCDateTime())


@functools.cache
def reserve_statement(periodic: bool, limited: bool) -> Update:
    """Reserve `b_amount` on the key's balance row, within `b_limit` when `limited`: one of
    four shapes, each built once (with bound parameters, not literals)."""
    key_hash, start, now = _balance_params(periodic)
    amount = bindparam("b_amount", type_=BigInteger())
    used = _period_used(key_hash, start)
    stmt = (
        update(key_balances)
        .where(_balance.key_hash == key_hash)
        .values(
            period_start=start,
            period_used_micro=used,
            reserved_micro=_balance.reserved_micro + amount,
            updated_at=now,
        )
    )
    if limited:
        stmt = stmt.where(
            used + _balance.reserved_micro + amount <= bindparam("b_limit", type_=BigInteger())
        )
    return stmt


@functools.cache
def settle_statement(periodic: bool) -> Update:
    """Charge `b_delivered` of the `b_reserved` held on the key's balance row. The period's
    usage: the counter plus this charge, or (in a new period) the ledger's sum since its start,
    which already holds this charge (it is appended first)."""
    key_hash, start, now = _balance_params(periodic)
    delivered = bindparam("b_delivered", type_=BigInteger())
    return (
        update(key_balances)
        .where(_balance.key_hash == key_hash)
        .values(
            period_start=start,
            period_used_micro=case(
                (_same_period(start), _balance.period_used_micro + delivered),
                else_=_settled(key_hash, start),
            ),
            reserved_micro=_balance.reserved_micro - bindparam("b_reserved", type_=BigInteger()),
            total_used_micro=_balance.total_used_micro + delivered,
            updated_at=now,
        )
    )


def _period_used(key_hash: str, start: datetime | None) -> Any:
    """The key's usage in the period starting at `start`: the counter when it is for that
    period, else the ledger's sum since `start` (a new period starts from what was settled in
    it, nothing when none was)."""
    return case((_same_period(start), _balance.period_used_micro), else_=_settled(key_hash, start))


def _balance_upsert(dialect: Any) -> Any:
    stmt = dialect.insert(key_balances).values(
        period_used_micro=0, reserved_micro=0, total_used_micro=0
    )
    return stmt.on_conflict_do_update(
        index_elements=[_balance.key_hash], set_={"updated_at": stmt.excluded.updated_at}
    )


_UPSERT_BALANCE = {"postgresql": _balance_upsert(postgresql), "sqlite": _balance_upsert(sqlite)}


def lock_balance(conn: Connection, key_hash: str, start: datetime | None, now: datetime) -> None:
    """Create the key's balance row if missing and hold its lock until the transaction ends
    (an upsert that touches the row locks it on PostgreSQL; SQLite holds the database)."""
    upsert = _UPSERT_BALANCE["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    conn.execute(upsert, {"key_hash": key_hash, "period_start": start, "updated_at": now})
