"""Migration 0002: the ledger tables, and a database from before the ledger keeps its usage."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import inspect

from pixelrouter.store import KeyBalance, KeyUsage, NewGeneration, Store
from pixelrouter.store.migrate import upgrade

from .ledgerutil import assert_consistent, reserve


def test_ledger_tables_and_indexes(store: Store) -> None:
    insp = inspect(store.engine)
    assert {"key_balances", "reservations", "ledger_entries", "rate_windows"} <= set(
        insp.get_table_names()
    )
    indexes = {ix["name"]: ix["column_names"] for ix in insp.get_indexes("reservations")}
    assert indexes["ix_reservations_state_expires_at"] == ["state", "expires_at"]
    assert indexes["ix_reservations_key_hash"] == ["key_hash"]
    ledger_indexes = {ix["name"]: ix["column_names"] for ix in insp.get_indexes("ledger_entries")}
    assert ledger_indexes["ix_ledger_entries_key_hash_kind_created_at"] == [
        "key_hash",
        "kind",
        "created_at",
    ]
    uniques = [u["column_names"] for u in insp.get_unique_constraints("ledger_entries")]
    assert ["generation_id", "kind"] in uniques
    assert insp.get_pk_constraint("rate_windows")["constrained_columns"] == [
        "key_hash",
        "window_start",
    ]


def test_usage_recorded_before_the_ledger_is_carried_over(db_url: str) -> None:
    with Store(db_url) as store:
        upgrade(store.engine, "0001")
        monthly, _ = store.create_key("monthly", limit_micro=50_000, limit_reset="monthly")
        lifetime, _ = store.create_key("lifetime", limit_micro=50_000)
        idle, _ = store.create_key("idle")
        for gen_id, key_hash, cost, finished_at in (
            ("gen-may", monthly.hash, 14_000, datetime(2026, 5, 20, tzinfo=UTC)),
            ("gen-jun", monthly.hash, 15_000, datetime(2026, 6, 2, tzinfo=UTC)),
            ("gen-life", lifetime.hash, 40_000, datetime(2026, 6, 2, tzinfo=UTC)),
        ):
            store.start_generation(
                NewGeneration(id=gen_id, model="m", api="images", key_hash=key_hash)
            )
            store.finish_generation(
                gen_id, state="succeeded", total_cost_micro=cost, finished_at=finished_at
            )
        store.start_generation(
            NewGeneration(id="gen-free", model="m", api="images", key_hash=idle.hash)
        )
        store.finish_generation("gen-free", state="failed")
        store.start_generation(NewGeneration(id="gen-anon", model="m", api="images"))
        store.finish_generation("gen-anon", state="succeeded", total_cost_micro=14_000)

        store.migrate()
        now = datetime(2026, 6, 3, tzinfo=UTC)
        assert store.key_usage(monthly.hash, now) == KeyUsage(29_000, 0, 15_000, 15_000)
        assert store.key_balance(monthly.hash, now) == KeyBalance(15_000, 0, 29_000)
        assert store.key_balance(lifetime.hash, now) == KeyBalance(40_000, 0, 40_000)
        assert store.key_balance(idle.hash, now) == KeyBalance(0, 0, 0)
        assert store.ledger_total() == 69_000
        got = store.get_reservation("gen-jun")
        assert got is not None and (got.state, got.settled_micro) == ("settled", 15_000)
        # the limits hold against what was spent before the upgrade
        assert reserve(store, "gen-a", lifetime.hash, 10_001, now=now) is None
        assert reserve(store, "gen-b", lifetime.hash, 10_000, now=now) is not None
        assert reserve(store, "gen-c", monthly.hash, 35_001, now=now) is None
        assert reserve(store, "gen-d", monthly.hash, 35_000, now=now) is not None
        for key in (monthly, lifetime, idle):
            assert_consistent(store, key.hash, now)
