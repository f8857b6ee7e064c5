"""Many threads (or stores, standing in for processes) spending one key at once: the limit
holds exactly, every generation is charged at most once, and the counters match the ledger."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from dbutil import BACKENDS_AND_PGBOUNCER, database_url
from pixelrouter.store import Store

from .ledgerutil import T0, TTL, assert_consistent, reserve, run_together

THREADS = 64
PRICE = 14_000


@pytest.fixture(params=BACKENDS_AND_PGBOUNCER)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite, PostgreSQL, and PostgreSQL through PgBouncer in transaction pooling mode: a
    server connection is lent per transaction, so nothing may outlive one."""
    with database_url(request.param, tmp_path) as url:
        yield url


@contextmanager
def _stores(store: Store, db_url: str, separate: bool) -> Iterator[Callable[[int], Store]]:
    """Thread i's store: the shared one, or a Store of its own on the same database."""
    if not separate:
        yield lambda i: store
        return
    own: dict[int, Store] = {}

    def store_of(i: int) -> Store:
        return own.setdefault(i, Store(db_url))

    try:
        yield store_of
    finally:
        for s in own.values():
            s.close()


@pytest.mark.parametrize("separate", [False, True], ids=["one-store", "store-per-thread"])
def test_exactly_the_limit_is_spent_when_64_threads_race(
    store: Store, db_url: str, separate: bool
) -> None:
    n = 10
    key, _ = store.create_key("raced", limit_micro=n * PRICE, limit_reset="monthly")

    with _stores(store, db_url, separate) as store_of:

        def work(i: int) -> bool:
            s = store_of(i)
            if reserve(s, f"gen-{i}", key.hash, PRICE) is None:
                return False
            assert s.settle(f"gen-{i}", PRICE, now=T0 + timedelta(seconds=1))
            return True

        results = run_together(THREADS, work)

    assert results.count(True) == n
    after = T0 + timedelta(seconds=1)
    assert store.ledger_total() == store.ledger_total(key.hash) == n * PRICE
    balance = assert_consistent(store, key.hash, after)
    assert balance.total_used == balance.period_used == n * PRICE
    assert balance.reserved == 0 and store.open_reservations() == []
    assert balance.remaining(n * PRICE) == 0


@pytest.mark.parametrize("separate", [False, True], ids=["one-store", "store-per-thread"])
def test_one_generation_settled_from_many_threads_is_charged_once(
    store: Store, db_url: str, separate: bool
) -> None:
    key, _ = store.create_key("k", limit_micro=PRICE)
    reserve(store, "gen-1", key.hash, PRICE)

    with _stores(store, db_url, separate) as store_of:

        def work(i: int) -> bool:
            s = store_of(i)
            if i % 3 == 0:
                return s.release("gen-1", now=T0)
            if i % 3 == 1:
                return s.sweep_reservations(now=T0 + TTL) == 1
            return s.settle("gen-1", PRICE, now=T0)

        results = run_together(32, work)

    assert results.count(True) == 1
    assert store.ledger_total(key.hash) in (0, PRICE)
    assert len(store.ledger_entries(generation_id="gen-1")) == 3
    balance = assert_consistent(store, key.hash, T0 + TTL)
    assert balance.reserved == 0


def test_mixed_spending_never_overspends(store: Store) -> None:
    limit = 100_000
    keys = [store.create_key(f"k{j}", limit_micro=limit)[0] for j in range(2)]
    rng = random.Random(7)
    plans = []
    for _ in range(THREADS):
        images = rng.randint(1, 4)
        delivered = rng.randint(0, images) * PRICE
        plans.append((rng.choice(keys).hash, images * PRICE, delivered, rng.random()))
    later = T0 + TTL

    def work(i: int) -> int:
        key_hash, amount, delivered, choice = plans[i]
        gen_id = f"gen-{i}"
        if i % 16 == 0:  # a sweeper running alongside, releasing reservations "after a crash"
            return -store.sweep_reservations(now=later)
        if reserve(store, gen_id, key_hash, amount) is None:
            return 0
        if choice < 0.6:
            return delivered if store.settle(gen_id, delivered, now=T0) else 0
        if choice < 0.8:
            store.release(gen_id, now=T0)
        return 0  # left open: the sweeper may release it

    charged = sum(c for c in run_together(THREADS, work) if c > 0)
    store.sweep_reservations(now=later)
    assert store.open_reservations() == []
    assert store.ledger_total() == charged
    for key in keys:
        balance = assert_consistent(store, key.hash, later)
        assert balance.period_used <= limit and balance.reserved == 0


def test_many_pairs_of_many_threads_through_one_pool(store: Store) -> None:
    """Each statement runs far more than psycopg's 5 times before it would prepare it: through
    PgBouncer a prepared statement would land on another server connection and fail."""
    keys = [store.create_key(f"k{j}", limit_micro=10**9, limit_reset="daily")[0] for j in range(4)]

    def work(i: int) -> int:
        done = 0
        for n in range(12):
            gen_id = f"gen-{i}-{n}"
            key = keys[(i + n) % len(keys)]
            assert reserve(store, gen_id, key.hash, PRICE) is not None
            if n % 3 == 2:
                assert store.release(gen_id, now=T0)
            else:
                assert store.settle(gen_id, PRICE // 2, now=T0)
                done += PRICE // 2
        return done

    charged = sum(run_together(16, work))
    assert store.ledger_total() == charged
    for key in keys:
        balance = assert_consistent(store, key.hash, T0)
        assert balance.reserved == 0
