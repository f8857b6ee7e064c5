"""Per-key fixed-window rate limits, counted in the database so every process shares them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from pixelrouter.periods import rate_window
from pixelrouter.store import Store
from pixelrouter.store.tables import rate_windows

from .ledgerutil import run_together

WINDOW_START = datetime(2026, 6, 2, 12, 0, tzinfo=UTC)  # a multiple of 60 s since the epoch


def test_n_requests_pass_and_the_next_waits_for_the_window_to_end(store: Store) -> None:
    key, _ = store.create_key("k")
    for i in range(3):
        at = WINDOW_START + timedelta(seconds=i)
        assert store.hit_rate_limit(key.hash, requests=3, interval_s=60, now=at) is None
    at = WINDOW_START + timedelta(seconds=20, milliseconds=500)
    assert store.hit_rate_limit(key.hash, requests=3, interval_s=60, now=at) == 40  # 39.5 s
    last = WINDOW_START + timedelta(seconds=59, milliseconds=999)
    assert store.hit_rate_limit(key.hash, requests=3, interval_s=60, now=last) == 1
    next_window = WINDOW_START + timedelta(seconds=60)
    assert store.hit_rate_limit(key.hash, requests=3, interval_s=60, now=next_window) is None


def test_retry_after_is_within_one_interval(store: Store) -> None:
    key, _ = store.create_key("k")
    at = WINDOW_START + timedelta(seconds=7)
    assert store.hit_rate_limit(key.hash, requests=1, interval_s=10, now=at) is None
    retry = store.hit_rate_limit(key.hash, requests=1, interval_s=10, now=at)
    assert retry is not None and 1 <= retry <= 10
    assert retry == 3


def test_keys_are_counted_apart(store: Store) -> None:
    a, _ = store.create_key("a")
    b, _ = store.create_key("b")
    assert store.hit_rate_limit(a.hash, requests=1, interval_s=60, now=WINDOW_START) is None
    assert store.hit_rate_limit(b.hash, requests=1, interval_s=60, now=WINDOW_START) is None
    assert store.hit_rate_limit(a.hash, requests=1, interval_s=60, now=WINDOW_START) == 60


def test_two_stores_on_one_database_share_the_counter(store: Store, db_url: str) -> None:
    key, _ = store.create_key("k")
    with Store(db_url) as other:
        assert store.hit_rate_limit(key.hash, requests=2, interval_s=60, now=WINDOW_START) is None
        assert other.hit_rate_limit(key.hash, requests=2, interval_s=60, now=WINDOW_START) is None
        assert other.hit_rate_limit(key.hash, requests=2, interval_s=60, now=WINDOW_START) == 60
        assert store.hit_rate_limit(key.hash, requests=2, interval_s=60, now=WINDOW_START) == 60


def test_concurrent_requests_are_each_counted_once(store: Store) -> None:
    key, _ = store.create_key("k")
    results = run_together(
        40, lambda i: store.hit_rate_limit(key.hash, requests=25, interval_s=60, now=WINDOW_START)
    )
    assert results.count(None) == 25
    assert all(r == 60 for r in results if r is not None)


def test_old_windows_are_deleted(store: Store) -> None:
    key, _ = store.create_key("k")
    for minute in range(5):
        at = WINDOW_START + timedelta(minutes=minute)
        for _ in range(3):
            store.hit_rate_limit(key.hash, requests=10, interval_s=60, now=at)
    with store.engine.connect() as conn:
        rows = conn.execute(select(rate_windows.c.window_start, rate_windows.c.count)).all()
    assert [tuple(r) for r in rows] == [(rate_window(at, 60).start, 3)]
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(rate_windows)) == 1


def test_bad_arguments_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        store.hit_rate_limit("h", requests=1, interval_s=0, now=WINDOW_START)
    with pytest.raises(ValueError, match="requests"):
        store.hit_rate_limit("h", requests=-1, interval_s=1, now=WINDOW_START)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.hit_rate_limit("h", requests=1, interval_s=1, now=datetime(2026, 1, 1))


def test_windows_are_aligned_to_the_epoch() -> None:
    window = rate_window(WINDOW_START + timedelta(seconds=61, microseconds=1), 60)
    assert window.start == int(WINDOW_START.timestamp()) + 60
    assert window.end == window.start + 60
    assert window.retry_after_s(WINDOW_START + timedelta(seconds=61, microseconds=1)) == 59
    assert rate_window(datetime(1970, 1, 1, 0, 0, 59, tzinfo=UTC), 60).start == 0
