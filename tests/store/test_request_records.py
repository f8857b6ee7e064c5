"""A request's admission and close in one statement (PostgreSQL) write exactly the rows the
transaction of the separate methods writes; anything the statement does not cover writes
nothing and is left to that transaction (store/request_records.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dbutil import BACKENDS_AND_PGBOUNCER, database_url
from pixelrouter.store import NewGeneration, Store
from pixelrouter.store.stats_records import ProviderOutcome
from pixelrouter.store.tables import (
    generations,
    key_balances,
    ledger_entries,
    provider_outcome_minutes,
    provider_outcomes,
    reservations,
)

from .ledgerutil import assert_consistent, run_together

NOW = datetime(2026, 12, 3, 10, 0, 30, tzinfo=UTC)
LAST_MONTH = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
TTL = timedelta(minutes=11)


@pytest.fixture(params=BACKENDS_AND_PGBOUNCER)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite, PostgreSQL, and PostgreSQL through PgBouncer in transaction pooling mode."""
    with database_url(request.param, tmp_path) as url:
        yield url


class Refused(Exception):
    """The key's limit cannot cover the reservation."""


def _record(store: Store, gen_id: str, key_hash: str | None, **fields: Any) -> NewGeneration:
    return NewGeneration(
        id=gen_id,
        key_hash=key_hash,
        model="m",
        api="images",
        n=2,
        width=64,
        height=64,
        seed=7,
        app_title="t\x00itle",  # NUL: stored as U+FFFD either way
        app_categories=("cli",),
        metadata={"run": 1},
        loras=({"name": "ink", "scale": 0.5},),
        created_at=NOW,
        **fields,
    )


def admit(store: Store, rec: NewGeneration, amount: int, now: datetime = NOW) -> str:
    """Admission as `Bookkeeping` runs it: the statement, else the transaction. Which ran."""
    assert rec.key_hash is not None
    if store.admit_at_once(rec, amount_micro=amount, expires_at=now + TTL, now=now):
        return "statement"
    with store.transaction() as tx:
        reservation = store.reserve(
            generation_id=rec.id,
            key_hash=rec.key_hash,
            amount_micro=amount,
            expires_at=now + TTL,
            now=now,
            tx=tx,
        )
        if reservation is None:
            raise Refused
        store.start_generation(rec, tx=tx)
    return "transaction"


def close(
    store: Store,
    gen_id: str,
    record: dict[str, Any],
    *,
    ledger: str | None,
    key_hash: str | None,
    amount: int = 0,
    outcomes: list[ProviderOutcome],
    now: datetime = NOW,
) -> str:
    """The close as `Bookkeeping` runs it: the statement, else the transaction. Which ran."""
    if store.close_at_once(
        gen_id,
        record,
        ledger=ledger,  # type: ignore[arg-type]
        key_hash=key_hash,
        amount_micro=amount,
        outcomes=outcomes,
        now=now,
    ):
        return "statement"
    with store.transaction() as tx:
        store.finish_generation(gen_id, **record, finished_at=now, tx=tx)
        if ledger == "settle":
            store.settle(gen_id, amount, now=now, tx=tx)
        elif ledger == "release":
            store.release(gen_id, now=now, tx=tx)
        elif ledger == "charge":
            assert key_hash is not None
            store.charge(
                generation_id=gen_id, key_hash=key_hash, amount_micro=amount, now=now, tx=tx
            )
        store.record_outcomes(outcomes, tx=tx)
    return "transaction"


def _outcome(slug: str, status: int = 200, model: str = "m") -> ProviderOutcome:
    return ProviderOutcome(slug, "Provider", model, NOW, status, status >= 500, 40, 1, 1024)


def _scenario(store: Store, tag: str) -> list[str]:
    """Every kind of admission and close, on keys and providers of their own (`tag`); which
    path each step took."""
    limited = store.create_key(f"limited-{tag}", limit_micro=1_000, limit_reset="monthly")[0]
    unlimited = store.create_key(f"unlimited-{tag}")[0]
    aged = store.create_key(f"aged-{tag}", limit_micro=10_000, limit_reset="monthly")[0]
    aged_too = store.create_key(f"aged2-{tag}", limit_micro=10_000, limit_reset="monthly")[0]
    slug = f"p-{tag}"
    fine, failed = _outcome(slug), _outcome(slug, 502)
    other = _outcome(f"q-{tag}", model="n")
    paths = []

    def step(run: Callable[[], str]) -> None:
        try:
            paths.append(run())
        except (Refused, ValueError) as exc:
            paths.append(type(exc).__name__)

    ids = [f"gen-{tag}-{i}" for i in range(12)]
    answered = {
        "state": "succeeded",
        "cancelled": True,
        "model": "m",
        "provider_name": "Provider",
        "provider_slug": slug,
        "total_cost_micro": 300,
        "latency_ms": 55,
        "generation_time_ms": 40,
        "finish_reason": "client_gone",
        "tokens_prompt": 3,
        "tokens_completion": 512,
        "num_images": 1,
        "undelivered_images": 1,
        "provider_responses": [{"provider_name": "Provider", "status": 200, "latency": 40}],
    }
    failed_record = {"state": "failed", "finish_reason": "error", "error_message": "e\x00"}
    # The key's first reservation (no balance row yet), then one on its row.
    step(lambda: admit(store, _record(store, ids[0], limited.hash), 400))
    step(lambda: admit(store, _record(store, ids[1], limited.hash), 400))
    # Refused: 400 + 400 + 400 > 1,000.
    step(lambda: admit(store, _record(store, ids[2], limited.hash), 400))
    # A duplicate id: a ValueError, nothing written.
    step(lambda: admit(store, _record(store, ids[1], limited.hash), 100))
    # Settled in part, with a failed attempt and a fallback on another provider and model.
    outcomes = [failed, fine, other]
    step(
        lambda: close(
            store,
            ids[0],
            answered,
            ledger="settle",
            key_hash=limited.hash,
            amount=300,
            outcomes=outcomes,
        )
    )
    # Settling more than was reserved: a ValueError, nothing written.
    step(
        lambda: close(
            store,
            ids[1],
            answered,
            ledger="settle",
            key_hash=limited.hash,
            amount=401,
            outcomes=[fine],
        )
    )
    # Released (failed), then closed again: nothing changes the second time but the outcome.
    step(
        lambda: close(
            store, ids[1], failed_record, ledger="release", key_hash=limited.hash, outcomes=[failed]
        )
    )
    step(
        lambda: close(
            store,
            ids[1],
            answered,
            ledger="settle",
            key_hash=limited.hash,
            amount=300,
            outcomes=[fine],
        )
    )
    # A key without a limit: its first charge (no balance row), then one on its row, then a
    # second charge of the same generation (nothing), then nothing charged at all.
    for i in (3, 4, 5):
        store.start_generation(_record(store, ids[i], unlimited.hash))
    step(
        lambda: close(
            store,
            ids[3],
            answered,
            ledger="charge",
            key_hash=unlimited.hash,
            amount=300,
            outcomes=[fine],
        )
    )
    step(
        lambda: close(
            store,
            ids[4],
            answered,
            ledger="charge",
            key_hash=unlimited.hash,
            amount=300,
            outcomes=[fine, other],
        )
    )
    step(
        lambda: close(
            store,
            ids[4],
            answered,
            ledger="charge",
            key_hash=unlimited.hash,
            amount=300,
            outcomes=[],
        )
    )
    step(
        lambda: close(
            store, ids[5], failed_record, ledger=None, key_hash=unlimited.hash, outcomes=[failed]
        )
    )
    # Balance rows of last month: a settle and an admission take the transaction, which
    # moves the row to this month; the next settle is one statement again.
    for key, i in ((aged, 6), (aged_too, 7)):
        store.reserve(
            generation_id=ids[i],
            key_hash=key.hash,
            amount_micro=100,
            expires_at=LAST_MONTH + TTL,
            now=LAST_MONTH,
        )
        store.start_generation(_record(store, ids[i], key.hash))
    step(
        lambda: close(
            store, ids[6], answered, ledger="settle", key_hash=aged.hash, amount=60, outcomes=[fine]
        )
    )
    step(lambda: admit(store, _record(store, ids[8], aged_too.hash), 500))
    step(
        lambda: close(
            store,
            ids[8],
            answered,
            ledger="settle",
            key_hash=aged_too.hash,
            amount=300,
            outcomes=[],
        )
    )
    step(
        lambda: close(
            store,
            ids[7],
            answered,
            ledger="settle",
            key_hash=aged_too.hash,
            amount=100,
            outcomes=[],
        )
    )
    # No key at all.
    store.start_generation(_record(store, ids[9], None))
    step(lambda: close(store, ids[9], answered, ledger=None, key_hash=None, outcomes=[fine]))
    return paths


_DROPPED = {"id", "created_at", "finished_at", "updated_at", "expires_at"}
# The column of each table that says which scenario wrote a row.
_OWNER = {
    generations: "id",
    reservations: "generation_id",
    ledger_entries: "generation_id",
    key_balances: "key_hash",
    provider_outcomes: "provider_slug",
    provider_outcome_minutes: "provider_slug",
}


def _rows(store: Store, tag: str) -> dict[str, list[tuple[str, ...]]]:
    """Every row the scenario `tag` wrote, with its key hashes, ids and slugs named alike
    whichever scenario wrote them, and without the ids and times that differ."""
    names = {key.hash: key.name for key in store.list_keys()}

    def clean(value: Any) -> str:
        if isinstance(value, str):
            value = names.get(value, value)
            return value.replace(tag, "TAG")
        return repr(value)

    out = {}
    with store.engine.connect() as conn:
        for table, owner in _OWNER.items():
            columns = [c for c in table.c if c.name not in _DROPPED]
            rows = conn.execute(select(table.c[owner], *columns)).all()
            out[table.name] = sorted(
                tuple(clean(v) for v in row[1:]) for row in rows if tag in names.get(row[0], row[0])
            )
    return out


def test_the_statement_and_the_transaction_write_the_same_rows(store: Store) -> None:
    store.one_statement = True
    fast = _scenario(store, "fast")
    store.one_statement = False
    slow = _scenario(store, "slow")
    assert (
        slow
        == ["transaction"] * 2
        + ["Refused", "ValueError", "transaction", "ValueError"]
        + ["transaction"] * 11
    )
    if store.backend == "postgresql":
        # The key's first reservation, a refusal, a duplicate, settling more than reserved,
        # a first charge and a balance row of another period take the transaction.
        assert fast == [
            "transaction", "statement", "Refused", "ValueError",  # admissions
            "statement", "ValueError", "statement", "statement",  # closes of a limited key
            "transaction", "statement", "statement", "statement",  # a key without a limit
            "transaction", "transaction", "statement", "statement",  # last month's balance
            "statement",  # no key
        ]  # fmt: skip
    else:
        assert fast == slow
    rows = _rows(store, "fast")
    assert rows == _rows(store, "slow")
    counts = {name: len(found) for name, found in rows.items()}
    assert counts == {
        "generations": 9,
        "reservations": 7,
        "ledger_entries": 21,
        "key_balances": 4,
        "provider_outcomes": 11,
        "provider_outcome_minutes": 2,
    }


def test_racing_admissions_and_closes_spend_exactly_the_limit(store: Store) -> None:
    """32 threads admit and close on one key whose limit covers 10 requests, and 32 more
    close generations of a key without a limit: the limit holds exactly, each generation is
    charged once, and the counters equal the ledger."""
    price, threads = 14_000, 32
    limited = store.create_key("raced", limit_micro=10 * price, limit_reset="monthly")[0]
    unlimited = store.create_key("raced-free")[0]
    # Both keys hold their balance rows, so the race meets the one-statement paths.
    admit(store, _record(store, "gen-first", limited.hash), 1)
    close(
        store,
        "gen-first",
        {"state": "failed"},
        ledger="release",
        key_hash=limited.hash,
        outcomes=[],
    )
    store.start_generation(_record(store, "gen-free-first", unlimited.hash))
    close(
        store,
        "gen-free-first",
        {"state": "succeeded", "total_cost_micro": price},
        ledger="charge",
        key_hash=unlimited.hash,
        amount=price,
        outcomes=[],
    )
    for i in range(threads):
        store.start_generation(_record(store, f"gen-free-{i}", unlimited.hash))
    done = {"state": "succeeded", "total_cost_micro": price, "num_images": 1}

    def work(i: int) -> bool:
        gen_id = f"gen-raced-{i}"
        try:
            admit(store, _record(store, gen_id, limited.hash), price)
        except Refused:
            admitted = False
        else:
            admitted = True
            close(
                store,
                gen_id,
                done,
                ledger="settle",
                key_hash=limited.hash,
                amount=price,
                outcomes=[_outcome("raced")],
            )
        close(
            store,
            f"gen-free-{i}",
            done,
            ledger="charge",
            key_hash=unlimited.hash,
            amount=price,
            outcomes=[_outcome("raced")],
        )
        return admitted

    assert sum(run_together(threads, work)) == 10
    assert store.ledger_total(limited.hash) == 10 * price
    assert store.ledger_total(unlimited.hash) == (threads + 1) * price
    for key in (limited, unlimited):
        balance = assert_consistent(store, key.hash, NOW)
        assert balance.reserved == 0
    records = [store.get_generation(f"gen-free-{i}") for i in range(threads)]
    assert all(r is not None and r.state == "succeeded" for r in records)
    minute = store.outcome_counts("raced", NOW, {"m": timedelta(minutes=1)})
    assert minute["m"].successes == 10 + threads
