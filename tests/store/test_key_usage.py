"""Key usage: what the ledger settled, in all and per UTC day, Monday week and month."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pixelrouter.store import KeyUsage, NewGeneration, Store


def _spend(store: Store, key_hash: str, gen_id: str, cost: int, finished_at: datetime) -> None:
    """A generation as the service runs it: reserved at admission, settled when it finished."""
    created_at = finished_at - timedelta(seconds=2)
    assert store.reserve(
        generation_id=gen_id,
        key_hash=key_hash,
        amount_micro=cost,
        expires_at=finished_at + timedelta(hours=1),
        now=created_at,
    )
    store.start_generation(
        NewGeneration(id=gen_id, model="m", api="images", key_hash=key_hash, created_at=created_at)
    )
    assert store.finish_generation(
        gen_id, state="succeeded", total_cost_micro=cost, finished_at=finished_at
    )
    assert store.settle(gen_id, cost, now=finished_at)


def test_usage_windows_across_a_monday_and_a_month_boundary(store: Store) -> None:
    key, _ = store.create_key("spender")
    other, _ = store.create_key("other")
    # Sunday 2026-05-31 is the last day of May; Monday 2026-06-01 starts a week and a month.
    _spend(store, key.hash, "gen-apr", 1, datetime(2026, 4, 30, 12, 0, tzinfo=UTC))
    _spend(store, key.hash, "gen-fri", 10, datetime(2026, 5, 29, 9, 0, tzinfo=UTC))
    _spend(store, key.hash, "gen-sun", 100, datetime(2026, 5, 31, 23, 59, 59, tzinfo=UTC))
    _spend(store, key.hash, "gen-mon", 1_000, datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    _spend(store, key.hash, "gen-tue", 10_000, datetime(2026, 6, 2, 8, 0, tzinfo=UTC))
    _spend(store, other.hash, "gen-other", 99_999, datetime(2026, 6, 2, 8, 0, tzinfo=UTC))
    # pending and failed-without-cost rows do not add anything
    store.start_generation(
        NewGeneration(id="gen-pending", model="m", api="chat", key_hash=key.hash)
    )
    store.start_generation(NewGeneration(id="gen-failed", model="m", api="chat", key_hash=key.hash))
    store.finish_generation(
        "gen-failed", state="failed", finished_at=datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
    )

    sunday_night = datetime(2026, 5, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert store.key_usage(key.hash, sunday_night) == KeyUsage(
        total=11_111, daily=100, weekly=110, monthly=110
    )
    # a window is the whole period holding `now`: Tuesday's spend is in Monday's week
    monday = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert store.key_usage(key.hash, monday) == KeyUsage(
        total=11_111, daily=1_000, weekly=11_000, monthly=11_000
    )
    tuesday = datetime(2026, 6, 2, 23, 0, tzinfo=UTC)
    usage = store.key_usage(key.hash, tuesday)
    assert usage == KeyUsage(total=11_111, daily=10_000, weekly=11_000, monthly=11_000)
    assert usage.in_period(None) == 11_111
    assert usage.in_period("daily") == 10_000
    assert usage.in_period("weekly") == 11_000
    assert usage.in_period("monthly") == 11_000
    mid_june_next_week = datetime(2026, 6, 9, 0, 0, tzinfo=UTC)
    assert store.key_usage(key.hash, mid_june_next_week) == KeyUsage(
        total=11_111, daily=0, weekly=0, monthly=11_000
    )


def test_usage_of_a_key_without_generations_is_zero(store: Store) -> None:
    key, _ = store.create_key("idle")
    assert store.key_usage(key.hash, datetime(2026, 1, 1, tzinfo=UTC)) == KeyUsage(0, 0, 0, 0)


def test_usage_sums_large_amounts_exactly(store: Store) -> None:
    key, _ = store.create_key("big")
    at = datetime(2026, 2, 3, tzinfo=UTC)
    for i in range(3):
        _spend(store, key.hash, f"gen-{i}", 3_000_000_000_001, at)
    usage = store.key_usage(key.hash, at)
    assert usage.total == 9_000_000_000_003 and isinstance(usage.total, int)


def test_limit_remaining_follows_the_reset_period(store: Store) -> None:
    key, _ = store.create_key("capped", limit_micro=20_000, limit_reset="daily")
    _spend(store, key.hash, "gen-yesterday", 15_000, datetime(2026, 6, 1, 10, tzinfo=UTC))
    _spend(store, key.hash, "gen-today", 14_000, datetime(2026, 6, 2, 10, tzinfo=UTC))
    usage = store.key_usage(key.hash, datetime(2026, 6, 2, 12, tzinfo=UTC))
    assert key.limit_remaining(usage) == 6_000
    lifetime = store.update_key(key.hash, limit_reset=None)
    assert lifetime is not None and lifetime.limit_remaining(usage) == 0  # never negative
    unlimited = store.update_key(key.hash, limit_micro=None)
    assert unlimited is not None and unlimited.limit_remaining(usage) is None
