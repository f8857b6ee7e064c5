"""A request's admission and close, each one statement on PostgreSQL.

Admission reserves the maximum cost and records the generation `pending`; the close finishes
the record, settles the reservation (or releases it, or charges an unreserved generation) and
counts the provider outcomes. Through `Store.transaction()` these are 3 and 6 statements with
a BEGIN and a COMMIT each (`billing/bookkeeping.py`, and SQLite always). On PostgreSQL the
common case is one data-modifying CTE run in autocommit: one round trip, one commit. The
ledger part is `pg_ledger`'s statement as it is; the rest only writes what the transaction
would have written. Anything the statement does not cover (a key's first reservation, a new
limit period, a refusal, an unknown or duplicate id, a key's first charge, settling more than
was reserved, any error of the statement's own) writes nothing, and the caller runs the
transaction, which then says what is wrong as it always has.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import JSON, Column, Engine, Table, text
from sqlalchemy.types import TypeDecorator

from pixelrouter.periods import check_aware, check_micro
from pixelrouter.store import pg_ledger
from pixelrouter.store.db import utcnow
from pixelrouter.store.generation_records import finish_values, pending_row
from pixelrouter.store.records import NewGeneration
from pixelrouter.store.stats_records import ProviderOutcome, minute_rows, outcome_rows
from pixelrouter.store.tables import (
    SafeJSON,
    generations,
    provider_outcome_minutes,
    provider_outcomes,
)

LedgerChange = Literal["settle", "release", "charge"]

# The close's ledger part. `settle` and `release` are `pg_ledger.CLOSE_ALONE` (a balance row of
# another period breaks a CHECK: the statement fails as a whole). `charge` books an unreserved
# generation as `LedgerRecords.charge` does: a reservation settled at once, its three entries,
# and the counters, when the balance row exists in the current period (another period breaks
# the same CHECK; no row yet is a failed cast in the final SELECT, below).
_CLOSE_CTES = pg_ledger.with_ctes(pg_ledger.CLOSE_ALONE)
_CHARGE_CTES = f"""r AS (
    INSERT INTO reservations (generation_id, key_hash, amount_micro, state, settled_micro,
                              created_at, expires_at, finished_at)
    SELECT :generation_id, :key_hash, :delivered, 'settled', :delivered, :now, :now, :now
    WHERE NOT EXISTS (SELECT 1 FROM reservations WHERE generation_id = :generation_id)
    RETURNING key_hash
), l AS (
    INSERT INTO ledger_entries (key_hash, generation_id, kind, amount_micro, created_at)
    SELECT r.key_hash, :generation_id, e.kind, e.amount, :now
    FROM r CROSS JOIN (
        VALUES ('reserve', CAST(:delivered AS BIGINT)), ('settle', CAST(:delivered AS BIGINT)),
               ('release', CAST(0 AS BIGINT))
    ) AS e (kind, amount)
), k AS (
    SELECT a.hash, {pg_ledger.PERIOD_START} AS start
    FROM r JOIN api_keys a ON a.hash = r.key_hash
), b AS (
    UPDATE key_balances kb
    SET period_used_micro = CASE WHEN kb.period_start IS NOT DISTINCT FROM k.start
                                 THEN kb.period_used_micro + :delivered ELSE -1 END,
        total_used_micro = kb.total_used_micro + :delivered,
        updated_at = :now
    FROM k
    WHERE kb.key_hash = k.hash
    RETURNING kb.key_hash
)"""
# A key charged with no balance row yet (its first charge): the text does not cast to an
# integer, and the whole statement fails. A CASE over subqueries is not folded when planned.
_CHARGE_CHECK = (
    "CAST(CASE WHEN (SELECT count(*) FROM k) > (SELECT count(*) FROM b)"
    " THEN 'no balance row' ELSE '0' END AS INTEGER)"
)


class RequestRecords:
    """Admission and close of `Store` in one statement each, where the database can."""

    engine: Engine
    # False: always decline, so callers run their transaction (benchmarks compare the two).
    one_statement: bool = True

    def admit_at_once(
        self,
        rec: NewGeneration,
        *,
        amount_micro: int,
        expires_at: datetime,
        now: datetime | None = None,
    ) -> bool:
        """Reserve `amount_micro` against the key of `rec` (`LedgerRecords.reserve`) and record
        it `pending` (`GenerationRecords.start_generation`) in one statement (PostgreSQL).

        True: both are written. False: nothing is: run them in one transaction instead."""
        if not self._at_once() or rec.key_hash is None:
            return False
        check_micro("amount_micro", amount_micro)
        check_aware("expires_at", expires_at)
        now = check_aware("now", now or utcnow())
        row = pending_row(rec)
        columns = tuple(row)
        params = pg_ledger.reserve_params(
            {
                "generation_id": rec.id,
                "key_hash": rec.key_hash,
                "amount_micro": amount_micro,
                "created_at": now,
                "expires_at": expires_at,
            }
        )
        params.update(_bind(generations, row, "g_"))
        done = _run(self.engine, _admit_sql(columns), params)
        return done is not None and bool(done[0])

    def close_at_once(
        self,
        generation_id: str,
        record: Mapping[str, Any],
        *,
        ledger: LedgerChange | None,
        key_hash: str | None = None,
        amount_micro: int = 0,
        outcomes: Sequence[ProviderOutcome] = (),
        now: datetime | None = None,
    ) -> bool:
        """Close a generation in one statement (PostgreSQL): finish its record with `record`
        (the fields of `finish_generation`), then `ledger`: `settle` its reservation to
        `amount_micro`, `release` it, `charge` `amount_micro` to `key_hash` with no
        reservation (`LedgerRecords.charge`), or None; and count `outcomes`. Each part writes
        what its own method would: a record no longer pending, a reservation no longer open
        and a generation already charged are left as they are.

        True: written. False: nothing is: run the methods in one transaction instead."""
        if not self._at_once():
            return False
        sql, params = close_statement(
            generation_id,
            record,
            ledger=ledger,
            key_hash=key_hash,
            amount_micro=amount_micro,
            outcomes=outcomes,
            now=now,
        )
        done = _run(self.engine, sql, params)
        return done is not None and bool(done[0])

    def _at_once(self) -> bool:
        return self.one_statement and self.engine.dialect.name == "postgresql"


def close_statement(
    generation_id: str,
    record: Mapping[str, Any],
    *,
    ledger: LedgerChange | None,
    key_hash: str | None = None,
    amount_micro: int = 0,
    outcomes: Sequence[ProviderOutcome] = (),
    now: datetime | None = None,
) -> tuple[str, dict[str, Any]]:
    """The SQL of `RequestRecords.close_at_once` (psycopg's parameter style) and its
    parameters. Its one row's first column, `written`, is false when it wrote nothing."""
    check_micro("amount_micro", amount_micro)
    now = check_aware("now", now or utcnow())
    values = finish_values(**record)
    params: dict[str, Any] = {"generation_id": generation_id, "now": now}
    if ledger in ("settle", "release"):
        delivered = amount_micro if ledger == "settle" else 0
        state = "settled" if ledger == "settle" else "released"
        params.update(pg_ledger.close_params(generation_id, delivered, now, state))
    elif ledger == "charge":
        if key_hash is None:
            raise ValueError("a charge needs the key's hash")
        params.update(pg_ledger.period_params(now))
        params.update(key_hash=key_hash, delivered=amount_micro)
    params.update(_bind(generations, values, "f_"))
    outcome_values = outcome_rows(outcomes)
    minute_values = minute_rows(outcomes)
    for i, row in enumerate(outcome_values):
        params.update(_bind(provider_outcomes, row, f"o{i}_"))
    for i, row in enumerate(minute_values):
        params.update(_bind(provider_outcome_minutes, row, f"m{i}_"))
    sql = _close_sql(ledger, tuple(values), len(outcome_values), len(minute_values))
    return sql, params


def _run(engine: Engine, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """The statement on its own (`pg_ledger.run_alone`); None when it failed of its own accord
    (it wrote nothing: the caller's transaction meets the same case and says what it is). A
    lost connection is raised, as for any statement."""
    import psycopg  # PostgreSQL only: an optional extra

    try:
        return pg_ledger.run_alone(engine, sql, params)
    except psycopg.Error:
        return None


@functools.lru_cache(maxsize=64)
def _admit_sql(columns: tuple[str, ...]) -> str:
    """`pg_ledger.RESERVE` that also inserts the pending record (`columns`, from parameters
    `g_<column>`) when the reservation is made; its `moved` is 0 when nothing was written."""
    sql = f"""WITH {pg_ledger.with_ctes(pg_ledger.RESERVE)}, gi AS (
    INSERT INTO generations ({", ".join(columns)})
    SELECT {_casts(generations, columns, "g_")} FROM r
)
SELECT (SELECT count(*) FROM b) AS moved"""
    return _pyformat(sql)


@functools.lru_cache(maxsize=256)
def _close_sql(
    ledger: LedgerChange | None, columns: tuple[str, ...], outcomes: int, minutes: int
) -> str:
    """The close: `g` says whether to write at all (not when settling more than was reserved,
    which the transaction refuses), `f` finishes the record (`columns` from `f_<column>`), the
    ledger part, then the outcomes and their minutes. The minutes are counted after the
    balance row is locked (their WHERE reads `b`) and in the order of `minute_rows` (a VALUES
    list is read in order), the order the transaction takes them in, so a close of either
    kind never waits on another that waits on it."""
    ctes = []
    if ledger == "settle":
        ctes.append(
            "g AS (SELECT NOT EXISTS (SELECT 1 FROM reservations WHERE generation_id ="
            " :generation_id AND amount_micro < :delivered) AS ok)"
        )
    else:
        ctes.append("g AS (SELECT true AS ok)")
    sets = ", ".join(f"{name} = {_cast(generations.c[name], 'f_')}" for name in columns)
    ctes.append(
        f"f AS (\n    UPDATE generations SET {sets}\n"
        "    WHERE id = :generation_id AND state = 'pending' AND (SELECT ok FROM g)\n)"
    )
    if ledger in ("settle", "release"):
        ctes.append(_CLOSE_CTES)
    elif ledger == "charge":
        ctes.append(_CHARGE_CTES)
    after_balance = " AND (SELECT count(*) FROM b) >= 0" if ledger else ""
    if outcomes:
        names = tuple(provider_outcomes.c[c].name for c in _OUTCOME_COLUMNS)
        rows = _values(provider_outcomes, names, "o", outcomes)
        ctes.append(
            f"o AS (\n    INSERT INTO provider_outcomes ({', '.join(names)})\n"
            f"    SELECT * FROM (VALUES {rows}) AS v ({', '.join(names)})\n"
            "    WHERE (SELECT ok FROM g)\n)"
        )
    if minutes:
        names = tuple(c.name for c in provider_outcome_minutes.c)
        rows = _values(provider_outcome_minutes, names, "m", minutes)
        adds = ", ".join(
            f"{c} = provider_outcome_minutes.{c} + excluded.{c}"
            for c in ("successes", "errors", "excluded")
        )
        ctes.append(
            f"m AS (\n    INSERT INTO provider_outcome_minutes ({', '.join(names)})\n"
            f"    SELECT * FROM (VALUES {rows}) AS v ({', '.join(names)})\n"
            f"    WHERE (SELECT ok FROM g){after_balance}\n"
            f"    ON CONFLICT (provider_slug, model, minute) DO UPDATE SET {adds}\n)"
        )
    check = f", {_CHARGE_CHECK} AS no_balance_row" if ledger == "charge" else ""
    joined = ",\n".join(ctes)
    sql = f"WITH {joined}\nSELECT (SELECT ok FROM g) AS written{check}"
    return _pyformat(sql)


_OUTCOME_COLUMNS = (
    "provider_slug",
    "provider_name",
    "model",
    "created_at",
    "status",
    "provider_caused",
    "latency_ms",
    "images",
    "image_tokens",
)


def _pyformat(sql: str) -> str:
    """`:name` parameters as psycopg's `%(name)s`."""
    return str(text(sql).compile(dialect=pg_ledger.PSYCOPG))


def _values(table: Table, names: tuple[str, ...], prefix: str, count: int) -> str:
    return ", ".join(f"({_casts(table, names, f'{prefix}{i}_')})" for i in range(count))


def _casts(table: Table, names: Sequence[str], prefix: str) -> str:
    return ", ".join(_cast(table.c[name], prefix) for name in names)


def _cast(column: Column[Any], prefix: str) -> str:
    """`:<prefix><column>` cast to the column's base type (a NULL parameter has none; no
    length, so a value too long fails as the plain INSERT would, not cut short)."""
    kind = column.type
    if isinstance(kind, TypeDecorator):
        kind = kind.impl_instance
    if isinstance(kind, JSON):
        sql_type = "JSONB"
    else:
        sql_type = {
            bool: "BOOLEAN",
            int: "BIGINT",
            str: "TEXT",
            datetime: "TIMESTAMP WITH TIME ZONE",
        }[kind.python_type]
    return f"CAST(:{prefix}{column.name} AS {sql_type})"


def _bind(table: Table, row: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """`row`'s values as the columns' types bind them (NUL replaced, UTC, JSON)."""
    processors = _processors(table)
    return {f"{prefix}{name}": processors[name](value) for name, value in row.items()}


@functools.cache
def _processors(table: Table) -> dict[str, Callable[[Any], Any]]:
    from psycopg.types.json import Jsonb

    def identity(value: Any) -> Any:
        return value

    def processor(column: Column[Any]) -> Callable[[Any], Any]:
        process = column.type.bind_processor(pg_ledger.PSYCOPG) or identity
        if not isinstance(column.type, SafeJSON):
            return process
        return lambda value: None if value is None else Jsonb(process(value))

    return {column.name: processor(column) for column in table.c}
