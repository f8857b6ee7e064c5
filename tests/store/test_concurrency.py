"""Many threads writing at once: no "database is locked", no lost or doubled rows."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from pixelrouter.store import NewGeneration, Store, utcnow

THREADS = 50


def _run_together(count: int, work) -> list:  # type: ignore[no-untyped-def]
    """Run `work(i)` for i in range(count) on `count` threads released at the same moment."""
    barrier = threading.Barrier(count)

    def task(i: int):  # type: ignore[no-untyped-def]
        barrier.wait(timeout=30)
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(task, range(count)))  # re-raises the first error


def test_fifty_threads_write_generations(store: Store) -> None:
    key, _ = store.create_key("busy")

    def work(i: int) -> tuple[bool, bool, bool, bool]:
        gen_id = f"gen-thread-{i}"
        expires_at = utcnow() + timedelta(minutes=10)
        assert store.reserve(
            generation_id=gen_id, key_hash=key.hash, amount_micro=14_000, expires_at=expires_at
        )
        store.start_generation(NewGeneration(id=gen_id, model="m", api="chat", key_hash=key.hash))
        first = store.finish_generation(gen_id, state="succeeded", total_cost_micro=14_000)
        second = store.finish_generation(gen_id, state="failed")
        return first, second, store.settle(gen_id, 14_000), store.release(gen_id)

    results = _run_together(THREADS, work)
    assert results == [(True, False, True, False)] * THREADS
    generations = store.list_generations(key.hash, limit=1000)
    assert len(generations) == THREADS
    assert {g.state for g in generations} == {"succeeded"}
    assert store.key_usage(key.hash).total == THREADS * 14_000


def test_concurrent_finishes_of_one_generation_succeed_once(store: Store) -> None:
    store.start_generation(NewGeneration(id="gen-race", model="m", api="images"))
    results = _run_together(
        20, lambda i: store.finish_generation("gen-race", state="succeeded", total_cost_micro=i)
    )
    assert results.count(True) == 1


def test_concurrent_bootstrap_makes_one_management_key(store: Store) -> None:
    results = _run_together(10, lambda i: store.ensure_management_key(None))
    assert len([r for r in results if r is not None]) == 1
    assert len(store.list_keys(kind="management")) == 1


def test_two_stores_on_one_database_write_concurrently(db_url: str) -> None:
    with Store(db_url) as first, Store(db_url) as second:
        first.migrate()
        stores = (first, second)

        def work(i: int) -> str:
            return stores[i % 2].create_key(f"k{i}")[0].hash

        hashes = _run_together(20, work)
        assert sorted(k.hash for k in first.list_keys()) == sorted(hashes)
