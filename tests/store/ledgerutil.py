"""Helpers for ledger tests: reserve with a fixed clock, and check counters against the ledger."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from pixelrouter.store import KeyBalance, Reservation, Store

T0 = datetime(2026, 6, 2, 12, 0, tzinfo=UTC)  # a Tuesday
TTL = timedelta(minutes=11)
T = TypeVar("T")


def reserve(
    store: Store, gen_id: str, key_hash: str, amount: int, now: datetime = T0
) -> Reservation | None:
    return store.reserve(
        generation_id=gen_id, key_hash=key_hash, amount_micro=amount, expires_at=now + TTL, now=now
    )


def assert_consistent(store: Store, key_hash: str, now: datetime) -> KeyBalance:
    """The counters equal what the ledger sums to, and each closed reservation's entries add
    up: reserve = settle + release."""
    balance = store.key_balance(key_hash, now)
    usage = store.key_usage(key_hash, now)
    key = store.find_key(key_hash)
    assert key is not None
    assert balance.total_used == store.ledger_total(key_hash) == usage.total
    assert balance.period_used == usage.in_period(key.limit_reset)
    open_ = store.open_reservations(key_hash)
    assert balance.reserved == sum(r.amount_micro for r in open_)
    entries = store.ledger_entries(key_hash=key_hash)
    kinds = Counter((e.generation_id, e.kind) for e in entries)
    assert set(kinds.values()) <= {1}, "one entry per generation and kind"
    by_gen: dict[str, dict[str, int]] = {}
    for e in entries:
        by_gen.setdefault(e.generation_id, {})[e.kind] = e.amount_micro
    open_ids = {r.generation_id for r in open_}
    for gen_id, amounts in by_gen.items():
        if gen_id in open_ids:
            assert set(amounts) == {"reserve"}
        else:
            assert amounts["reserve"] == amounts["settle"] + amounts["release"], gen_id
            reservation = store.get_reservation(gen_id)
            assert reservation is not None and reservation.settled_micro == amounts["settle"]
    return balance


def run_together(count: int, work: Callable[[int], T]) -> list[T]:
    """Run `work(i)` for i in range(count) on `count` threads released at the same moment."""
    barrier = threading.Barrier(count)

    def task(i: int) -> T:
        barrier.wait(timeout=60)
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(task, range(count)))  # re-raises the first error
