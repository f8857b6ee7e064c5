"""PostgreSQL's one-statement ledger changes: each a data-modifying CTE, one round trip.

The common case of a reservation (a balance row already in the current period) and of a
settlement or release (an open reservation) is one statement here; anything else (the key's
first reservation, the first change of a new period, a refusal, an unknown key or generation)
writes nothing and the caller takes the step-by-step statements of `ledger_records`, which
SQLite always runs. Run on its own (`run_alone`), a statement is its own transaction: psycopg
autocommit, no BEGIN or COMMIT round trips.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, TextClause, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import InterfaceError, OperationalError

from pixelrouter.keys import LIMIT_RESETS, period_start
from pixelrouter.store.db import note_disconnect

# PostgreSQL: the period start of whichever reset the key has, chosen in the statement.
PERIOD_START = (
    "CASE a.limit_reset WHEN 'daily' THEN :p_daily WHEN 'weekly' THEN :p_weekly "
    "WHEN 'monthly' THEN :p_monthly END"
)

# A reservation when the key's balance row exists and is in the current period: the limit is
# checked on the newest row version (READ COMMITTED re-evaluates the WHERE after waiting on
# the row lock), the reservation and its ledger entry are inserted only if the row moved.
# `moved` 0 says nothing was written: the caller takes the step-by-step path.
RESERVE = text(
    f"""
WITH k AS (
    SELECT a.hash, a.limit_micro, {PERIOD_START} AS start
    FROM api_keys a WHERE a.hash = :key_hash
), b AS (
    UPDATE key_balances kb
    SET reserved_micro = kb.reserved_micro + :amount, updated_at = :now
    FROM k
    WHERE kb.key_hash = k.hash
      AND kb.period_start IS NOT DISTINCT FROM k.start
      AND (k.limit_micro IS NULL
           OR kb.period_used_micro + kb.reserved_micro + :amount <= k.limit_micro)
      AND NOT EXISTS (SELECT 1 FROM reservations WHERE generation_id = :generation_id)
    RETURNING kb.key_hash
), r AS (
    INSERT INTO reservations (generation_id, key_hash, amount_micro, state, settled_micro,
                              created_at, expires_at, finished_at)
    SELECT :generation_id, b.key_hash, :amount, 'open', 0, :now, :expires_at, NULL FROM b
    RETURNING generation_id, key_hash
), l AS (
    INSERT INTO ledger_entries (key_hash, generation_id, kind, amount_micro, created_at)
    SELECT r.key_hash, r.generation_id, 'reserve', :amount, :now FROM r
)
SELECT (SELECT count(*) FROM b) AS moved
"""
)

# Settle (`state` settled, `delivered` charged) or release (`state` released, 0) an open
# reservation: close it, append its settle and release entries, move the counters when the
# balance row is in the current period (a release moves only `reserved`, in any period).
# Returns the closed reservation's key and amount (none: it was not open), whether the
# counters moved, and the reservation's amount as stored (for the caller's error message).
CLOSE = text(
    f"""
WITH r AS (
    UPDATE reservations
    SET state = :state, settled_micro = :delivered, finished_at = :now
    WHERE generation_id = :generation_id AND state = 'open' AND amount_micro >= :delivered
    RETURNING key_hash, amount_micro
), k AS (
    SELECT r.key_hash, r.amount_micro, {PERIOD_START} AS start
    FROM r LEFT JOIN api_keys a ON a.hash = r.key_hash
), l AS (
    INSERT INTO ledger_entries (key_hash, generation_id, kind, amount_micro, created_at)
    SELECT r.key_hash, :generation_id, e.kind, e.amount, :now
    FROM r CROSS JOIN LATERAL (
        VALUES ('settle', CAST(:delivered AS BIGINT)), ('release', r.amount_micro - :delivered)
    ) AS e (kind, amount)
), b AS (
    UPDATE key_balances kb
    SET period_used_micro = kb.period_used_micro + :delivered,
        reserved_micro = kb.reserved_micro - k.amount_micro,
        total_used_micro = kb.total_used_micro + :delivered,
        updated_at = :now
    FROM k
    WHERE kb.key_hash = k.key_hash
      AND (CAST(:delivered AS BIGINT) = 0 OR kb.period_start IS NOT DISTINCT FROM k.start)
    RETURNING kb.key_hash
)
SELECT (SELECT key_hash FROM r) AS key_hash, (SELECT amount_micro FROM r) AS amount,
       (SELECT count(*) FROM b) AS moved,
       (SELECT amount_micro FROM reservations WHERE generation_id = :generation_id) AS stored
"""
)


# The same close run on its own, outside any transaction (autocommit: the statement is its own
# transaction, no BEGIN and COMMIT round trips). It may not stop half way, so instead of leaving
# the counters of a balance row in another period unmoved it fails as a whole: a
# `period_used_micro` of -1 breaks the column's CHECK, and the caller takes the long way.
CLOSE_ALONE = text(
    CLOSE.text.replace(
        "SET period_used_micro = kb.period_used_micro + :delivered,",
        "SET period_used_micro = CASE WHEN CAST(:delivered AS BIGINT) = 0"
        " OR kb.period_start IS NOT DISTINCT FROM k.start"
        " THEN kb.period_used_micro + :delivered ELSE -1 END,",
    ).replace(
        "      AND (CAST(:delivered AS BIGINT) = 0"
        " OR kb.period_start IS NOT DISTINCT FROM k.start)\n",
        "",
    )
)
PSYCOPG = postgresql.psycopg.dialect()  # type: ignore[attr-defined]
RESERVE_SQL = str(RESERVE.compile(dialect=PSYCOPG))
CLOSE_ALONE_SQL = str(CLOSE_ALONE.compile(dialect=PSYCOPG))


def with_ctes(stmt: TextClause) -> str:
    """The CTEs of `RESERVE` or `CLOSE_ALONE` (what follows WITH, up to the final SELECT), for a
    statement that does more in the same round trip (`request_records`)."""
    body = stmt.text.strip()
    assert body.startswith("WITH ")
    return body[len("WITH ") : body.rindex("\nSELECT ")]


def period_params(now: datetime) -> dict[str, datetime]:
    return {f"p_{reset}": period_start(reset, now) for reset in LIMIT_RESETS}


def run_alone(engine: Engine, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """Run one statement as its own transaction (psycopg autocommit: one round trip, no BEGIN
    or COMMIT) on a pooled connection; its first row. A dropped connection is invalidated and
    raised as SQLAlchemy's error, as a statement run through SQLAlchemy would be."""
    from psycopg import errors as psycopg_errors  # PostgreSQL only: an optional extra

    fairy = engine.raw_connection()
    try:
        driver = fairy.driver_connection
        assert driver is not None
        driver.autocommit = True
        try:
            return driver.execute(sql, params).fetchone()  # type: ignore[no-any-return]
        finally:
            if not driver.closed:
                driver.autocommit = False
    except (psycopg_errors.OperationalError, psycopg_errors.InterfaceError) as exc:
        fairy.invalidate(exc)
        note_disconnect(engine)
        error = (
            OperationalError if isinstance(exc, psycopg_errors.OperationalError) else InterfaceError
        )
        raise error(sql, None, exc, hide_parameters=True, connection_invalidated=True) from exc
    finally:
        fairy.close()


def reserve_params(row: dict[str, Any]) -> dict[str, Any]:
    now = row["created_at"]
    return {
        "key_hash": row["key_hash"],
        "generation_id": row["generation_id"],
        "amount": row["amount_micro"],
        "now": now,
        "expires_at": row["expires_at"],
        **period_params(now),
    }


def reserve_alone(engine: Engine, row: dict[str, Any]) -> bool:
    """The one-statement reservation as its own transaction; False: nothing was written."""
    from psycopg import errors as psycopg_errors

    try:
        moved = run_alone(engine, RESERVE_SQL, reserve_params(row))
    except psycopg_errors.UniqueViolation as exc:  # the same id reserved at once
        raise ValueError(f"generation {row['generation_id']} already has a reservation") from exc
    return moved is not None and bool(moved[0])


def reserve_in(conn: Connection, row: dict[str, Any]) -> bool:
    """PostgreSQL's one-statement reservation; False: nothing written, take the long way."""
    return bool(conn.scalar(RESERVE, reserve_params(row)))


def close_params(
    generation_id: str, delivered_micro: int, now: datetime, state: str
) -> dict[str, Any]:
    return {
        "generation_id": generation_id,
        "delivered": delivered_micro,
        "state": state,
        "now": now,
        **period_params(now),
    }


def close_alone(
    engine: Engine, generation_id: str, delivered_micro: int, now: datetime, state: str
) -> bool | None:
    """The one-statement close as its own transaction; None: the balance row is in another
    period, nothing was written, take the long way."""
    from psycopg import errors as psycopg_errors

    try:
        row = run_alone(
            engine,
            CLOSE_ALONE_SQL,
            close_params(generation_id, delivered_micro, now, state),
        )
    except psycopg_errors.CheckViolation:
        return None
    assert row is not None
    key_hash, _, _, stored = row
    return checked_close(generation_id, delivered_micro, key_hash, stored)


def checked_close(
    generation_id: str, delivered_micro: int, key_hash: str | None, stored: Any
) -> bool:
    """Whether a close closed the reservation; settling more than it held is a ValueError."""
    if key_hash is None and stored is not None and delivered_micro > stored:
        raise ValueError(
            f"cannot settle {delivered_micro} µ$ for generation {generation_id}: "
            f"only {stored} µ$ were reserved"
        )
    return key_hash is not None


def close_in(
    conn: Connection, generation_id: str, delivered_micro: int, now: datetime, state: str
) -> Row[Any]:
    """The one-statement settle or release in the caller's transaction (`CLOSE`): the closed
    reservation's `key_hash` and `amount` (None: it was not open), `moved` (whether the
    counters moved: not when the balance row is in another period) and `stored`."""
    return conn.execute(CLOSE, close_params(generation_id, delivered_micro, now, state)).one()
