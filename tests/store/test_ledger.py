"""The ledger: reserve against the limit, settle or release exactly once, sweep, period resets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from pixelrouter.store import KeyBalance, KeyUsage, Reservation, Store
from pixelrouter.store.tables import ledger_entries

from .ledgerutil import T0, TTL, assert_consistent, reserve


def test_reserve_within_the_limit_and_refuse_beyond_it(store: Store) -> None:
    key, _ = store.create_key("capped", limit_micro=30_000)
    first = reserve(store, "gen-1", key.hash, 14_000)
    assert first == Reservation(
        generation_id="gen-1",
        key_hash=key.hash,
        amount_micro=14_000,
        state="open",
        settled_micro=0,
        created_at=T0,
        expires_at=T0 + TTL,
        finished_at=None,
    )
    assert reserve(store, "gen-2", key.hash, 14_000) is not None
    assert reserve(store, "gen-3", key.hash, 14_000) is None  # 28_000 held, 2_000 left
    assert store.get_reservation("gen-3") is None
    assert store.key_balance(key.hash, T0) == KeyBalance(
        period_used=0, reserved=28_000, total_used=0
    )
    assert store.key_balance(key.hash, T0).remaining(30_000) == 2_000
    assert reserve(store, "gen-4", key.hash, 2_000) is not None  # exactly what is left
    assert reserve(store, "gen-5", key.hash, 1) is None
    assert_consistent(store, key.hash, T0)


def test_exact_boundary_and_zero_limit(store: Store) -> None:
    exact, _ = store.create_key("exact", limit_micro=14_000)
    assert reserve(store, "gen-exact", exact.hash, 14_000) is not None
    zero, _ = store.create_key("zero", limit_micro=0)
    assert reserve(store, "gen-zero", zero.hash, 1) is None
    assert reserve(store, "gen-free", zero.hash, 0) is not None


def test_no_limit_always_reserves(store: Store) -> None:
    key, _ = store.create_key("unlimited")
    for i in range(5):
        assert reserve(store, f"gen-{i}", key.hash, 10**15) is not None
    balance = store.key_balance(key.hash, T0)
    assert balance.reserved == 5 * 10**15 and balance.remaining(None) is None


def test_settle_charges_the_delivered_part_and_releases_the_rest(store: Store) -> None:
    key, _ = store.create_key("k", limit_micro=60_000)
    reserve(store, "gen-1", key.hash, 56_000)  # four images reserved
    at = T0 + timedelta(seconds=5)
    assert store.settle("gen-1", 28_000, now=at) is True  # two delivered
    got = store.get_reservation("gen-1")
    assert got is not None
    assert (got.state, got.settled_micro, got.finished_at) == ("settled", 28_000, at)
    assert store.key_balance(key.hash, at) == KeyBalance(28_000, 0, 28_000)
    assert [(e.kind, e.amount_micro, e.created_at) for e in store.ledger_entries()] == [
        ("reserve", 56_000, T0),
        ("settle", 28_000, at),
        ("release", 28_000, at),
    ]
    assert store.key_balance(key.hash, at).remaining(60_000) == 32_000
    assert_consistent(store, key.hash, at)


def test_settle_twice_charges_once(store: Store) -> None:
    key, _ = store.create_key("k", limit_micro=100_000)
    reserve(store, "gen-1", key.hash, 14_000)
    assert store.settle("gen-1", 14_000, now=T0) is True
    assert store.settle("gen-1", 14_000, now=T0) is False
    assert store.settle("gen-1", 0, now=T0) is False
    assert store.release("gen-1", now=T0) is False
    assert store.ledger_total(key.hash) == 14_000
    assert store.key_balance(key.hash, T0) == KeyBalance(14_000, 0, 14_000)
    assert_consistent(store, key.hash, T0)


def test_release_then_settle_charges_nothing(store: Store) -> None:
    key, _ = store.create_key("k", limit_micro=14_000)
    reserve(store, "gen-1", key.hash, 14_000)
    assert store.release("gen-1", now=T0) is True
    assert store.settle("gen-1", 14_000, now=T0) is False
    got = store.get_reservation("gen-1")
    assert got is not None and (got.state, got.settled_micro) == ("released", 0)
    assert store.key_balance(key.hash, T0) == KeyBalance(0, 0, 0)
    assert reserve(store, "gen-2", key.hash, 14_000) is not None  # the credit came back
    assert_consistent(store, key.hash, T0)


def test_settle_with_nothing_delivered_closes_as_settled(store: Store) -> None:
    key, _ = store.create_key("k")
    reserve(store, "gen-1", key.hash, 14_000)
    assert store.settle("gen-1", 0, now=T0) is True
    got = store.get_reservation("gen-1")
    assert got is not None and (got.state, got.settled_micro) == ("settled", 0)
    assert store.key_balance(key.hash, T0) == KeyBalance(0, 0, 0)
    assert_consistent(store, key.hash, T0)


def test_unknown_generation_settles_and_releases_nothing(store: Store) -> None:
    assert store.settle("gen-never", 14_000, now=T0) is False
    assert store.release("gen-never", now=T0) is False
    assert store.ledger_entries() == []


def test_settling_more_than_reserved_is_an_error(store: Store) -> None:
    key, _ = store.create_key("k")
    reserve(store, "gen-1", key.hash, 14_000)
    with pytest.raises(ValueError, match="only 14000 µ\\$ were reserved"):
        store.settle("gen-1", 14_001, now=T0)
    got = store.get_reservation("gen-1")
    assert got is not None and got.state == "open"  # untouched: it can still be settled
    assert store.settle("gen-1", 14_000, now=T0) is True


@pytest.mark.parametrize("amount", [-1, 0.014, True, "14000"])
def test_amounts_are_non_negative_integers(store: Store, amount: object) -> None:
    key, _ = store.create_key("k")
    with pytest.raises(ValueError, match="micro-dollars"):
        reserve(store, "gen-1", key.hash, amount)  # type: ignore[arg-type]
    reserve(store, "gen-2", key.hash, 14_000)
    with pytest.raises(ValueError, match="micro-dollars"):
        store.settle("gen-2", amount, now=T0)  # type: ignore[arg-type]


def test_a_second_reservation_for_one_generation_is_an_error(store: Store) -> None:
    key, _ = store.create_key("k", limit_micro=14_000)
    other, _ = store.create_key("other")
    reserve(store, "gen-1", key.hash, 14_000)
    with pytest.raises(ValueError, match="already has a reservation"):
        reserve(store, "gen-1", key.hash, 0)
    with pytest.raises(ValueError, match="already has a reservation"):
        reserve(store, "gen-1", other.hash, 1)
    assert store.key_balance(other.hash, T0) == KeyBalance(0, 0, 0)
    assert store.key_balance(key.hash, T0).reserved == 14_000
    assert_consistent(store, key.hash, T0)


def test_reserving_for_an_unknown_key_is_an_error(store: Store) -> None:
    with pytest.raises(ValueError, match="no key"):
        reserve(store, "gen-1", "0" * 64, 1)


def test_naive_datetimes_are_refused(store: Store) -> None:
    key, _ = store.create_key("k")
    with pytest.raises(ValueError, match="timezone-aware"):
        store.reserve(
            generation_id="g", key_hash=key.hash, amount_micro=1, expires_at=datetime(2026, 1, 1)
        )


def test_sweep_releases_only_expired_open_reservations(store: Store) -> None:
    key, _ = store.create_key("k", limit_micro=100_000)
    other, _ = store.create_key("other")
    reserve(store, "gen-old", key.hash, 14_000, now=T0)
    reserve(store, "gen-old-other", other.hash, 17_000, now=T0)
    reserve(store, "gen-settled", key.hash, 14_000, now=T0)
    store.settle("gen-settled", 14_000, now=T0 + timedelta(seconds=3))
    reserve(store, "gen-new", key.hash, 15_000, now=T0 + timedelta(minutes=5))
    sweep_at = T0 + TTL  # gen-old expires exactly now; gen-new in 5 minutes
    assert store.sweep_reservations(now=sweep_at - timedelta(microseconds=1)) == 0
    assert store.sweep_reservations(now=sweep_at) == 2
    assert store.sweep_reservations(now=sweep_at) == 0
    assert [r.generation_id for r in store.open_reservations()] == ["gen-new"]
    assert store.open_reservations(other.hash) == []
    swept = store.get_reservation("gen-old")
    assert swept is not None
    assert (swept.state, swept.settled_micro, swept.finished_at) == ("released", 0, sweep_at)
    settled = store.get_reservation("gen-settled")
    assert settled is not None and settled.state == "settled"
    # a generation that finishes after its reservation was swept is not charged twice
    assert store.settle("gen-old", 14_000, now=sweep_at) is False
    assert store.key_balance(key.hash, sweep_at) == KeyBalance(14_000, 15_000, 14_000)
    assert store.key_balance(other.hash, sweep_at) == KeyBalance(0, 0, 0)
    assert_consistent(store, key.hash, sweep_at)
    assert_consistent(store, other.hash, sweep_at)


def test_open_reservations_are_listed_oldest_first(store: Store) -> None:
    a, _ = store.create_key("a")
    b, _ = store.create_key("b")
    reserve(store, "gen-2", b.hash, 1, now=T0 + timedelta(seconds=2))
    reserve(store, "gen-1", a.hash, 1, now=T0 + timedelta(seconds=1))
    reserve(store, "gen-3", a.hash, 1, now=T0 + timedelta(seconds=3))
    assert [r.generation_id for r in store.open_reservations()] == ["gen-1", "gen-2", "gen-3"]
    assert [r.generation_id for r in store.open_reservations(a.hash)] == ["gen-1", "gen-3"]


def _use_up(store: Store, key_hash: str, gen_id: str, amount: int, at: datetime) -> None:
    assert reserve(store, gen_id, key_hash, amount, now=at) is not None
    assert store.settle(gen_id, amount, now=at)


def test_monthly_limit_resets_on_the_first_at_midnight_utc(store: Store) -> None:
    key, _ = store.create_key("monthly", limit_micro=28_000, limit_reset="monthly")
    _use_up(store, key.hash, "gen-nov-1", 14_000, datetime(2026, 11, 3, 8, tzinfo=UTC))
    _use_up(store, key.hash, "gen-nov-2", 14_000, datetime(2026, 11, 20, 8, tzinfo=UTC))
    last_second = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)
    assert reserve(store, "gen-late", key.hash, 1, now=last_second) is None
    assert store.key_balance(key.hash, last_second).remaining(28_000) == 0
    december = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    assert store.key_balance(key.hash, december) == KeyBalance(0, 0, 28_000)
    assert reserve(store, "gen-dec", key.hash, 28_000, now=december) is not None
    assert reserve(store, "gen-dec-2", key.hash, 1, now=december) is None
    assert_consistent(store, key.hash, december)
    assert store.key_usage(key.hash, december) == KeyUsage(28_000, 0, 0, 0)


def test_weekly_limit_resets_on_monday_at_midnight_utc(store: Store) -> None:
    key, _ = store.create_key("weekly", limit_micro=14_000, limit_reset="weekly")
    _use_up(store, key.hash, "gen-mon", 14_000, datetime(2026, 6, 1, 0, 0, tzinfo=UTC))  # Monday
    sunday_night = datetime(2026, 6, 7, 23, 59, 59, 999_999, tzinfo=UTC)
    assert reserve(store, "gen-sun", key.hash, 1, now=sunday_night) is None
    next_monday = datetime(2026, 6, 8, 0, 0, tzinfo=UTC)
    assert reserve(store, "gen-next", key.hash, 14_000, now=next_monday) is not None
    assert_consistent(store, key.hash, next_monday)


def test_daily_limit_resets_at_midnight_utc(store: Store) -> None:
    key, _ = store.create_key("daily", limit_micro=14_000, limit_reset="daily")
    _use_up(store, key.hash, "gen-1", 14_000, datetime(2026, 6, 2, 23, 0, tzinfo=UTC))
    assert (
        reserve(store, "gen-2", key.hash, 1, now=datetime(2026, 6, 2, 23, 59, tzinfo=UTC)) is None
    )
    midnight = datetime(2026, 6, 3, 0, 0, tzinfo=UTC)
    assert reserve(store, "gen-3", key.hash, 14_000, now=midnight) is not None
    assert_consistent(store, key.hash, midnight)


def test_a_lifetime_limit_never_resets(store: Store) -> None:
    key, _ = store.create_key("lifetime", limit_micro=14_000)
    _use_up(store, key.hash, "gen-1", 14_000, datetime(2026, 1, 5, tzinfo=UTC))
    assert reserve(store, "gen-2", key.hash, 1, now=datetime(2027, 1, 5, tzinfo=UTC)) is None


def test_usage_counts_in_the_period_it_was_settled(store: Store) -> None:
    key, _ = store.create_key("k", limit_micro=28_000, limit_reset="monthly")
    # reserved in November, delivered just after midnight: a December charge
    reserve(store, "gen-edge", key.hash, 28_000, now=datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    settled_at = datetime(2026, 12, 1, 0, 0, 30, tzinfo=UTC)
    assert store.settle("gen-edge", 14_000, now=settled_at)
    assert store.key_usage(key.hash, datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)) == KeyUsage(
        total=14_000,
        daily=0,
        weekly=14_000,
        monthly=0,  # Monday 30th: its week holds the 1st
    )
    assert store.key_usage(key.hash, settled_at) == KeyUsage(14_000, 14_000, 14_000, 14_000)
    assert store.key_balance(key.hash, settled_at) == KeyBalance(14_000, 0, 14_000)
    assert reserve(store, "gen-more", key.hash, 14_001, now=settled_at) is None
    assert reserve(store, "gen-rest", key.hash, 14_000, now=settled_at) is not None
    assert_consistent(store, key.hash, settled_at)


def test_key_usage_windows_follow_settle_times(store: Store) -> None:
    key, _ = store.create_key("k")
    # Sunday 2026-05-31 is the last day of May; Monday 2026-06-01 starts a week and a month.
    for gen_id, amount, at in (
        ("gen-sun", 100, datetime(2026, 5, 31, 23, 59, 59, tzinfo=UTC)),
        ("gen-mon", 1_000, datetime(2026, 6, 1, 0, 0, tzinfo=UTC)),
        ("gen-tue", 10_000, datetime(2026, 6, 2, 8, 0, tzinfo=UTC)),
    ):
        _use_up(store, key.hash, gen_id, amount, at)
    reserve(store, "gen-open", key.hash, 99_999, now=datetime(2026, 6, 2, 9, tzinfo=UTC))
    reserve(store, "gen-gone", key.hash, 99_999, now=datetime(2026, 6, 2, 9, tzinfo=UTC))
    store.release("gen-gone", now=datetime(2026, 6, 2, 9, tzinfo=UTC))
    tuesday = datetime(2026, 6, 2, 23, 0, tzinfo=UTC)
    assert store.key_usage(key.hash, tuesday) == KeyUsage(11_100, 10_000, 11_000, 11_000)
    assert store.key_usage(key.hash, datetime(2026, 5, 31, 12, tzinfo=UTC)) == KeyUsage(
        11_100, 100, 100, 100
    )
    assert store.key_balance(key.hash, tuesday) == KeyBalance(11_100, 99_999, 11_100)


def test_changing_the_reset_recounts_the_period_from_the_ledger(store: Store) -> None:
    key, _ = store.create_key("k", limit_micro=30_000)
    _use_up(store, key.hash, "gen-may", 14_000, datetime(2026, 5, 20, tzinfo=UTC))
    _use_up(store, key.hash, "gen-jun", 14_000, datetime(2026, 6, 2, tzinfo=UTC))
    now = datetime(2026, 6, 3, tzinfo=UTC)
    assert reserve(store, "gen-1", key.hash, 14_000, now=now) is None  # 28_000 of 30_000 used
    store.update_key(key.hash, limit_reset="monthly")
    assert store.key_balance(key.hash, now) == KeyBalance(14_000, 0, 28_000)
    assert reserve(store, "gen-2", key.hash, 14_000, now=now) is not None
    assert reserve(store, "gen-3", key.hash, 2_001, now=now) is None
    store.update_key(key.hash, limit_reset=None, limit_micro=50_000)
    assert store.key_balance(key.hash, now) == KeyBalance(28_000, 14_000, 28_000)
    assert reserve(store, "gen-4", key.hash, 8_001, now=now) is None
    assert reserve(store, "gen-5", key.hash, 8_000, now=now) is not None
    assert_consistent(store, key.hash, now)


def test_a_lowered_limit_refuses_but_never_goes_negative(store: Store) -> None:
    key, _ = store.create_key("k", limit_micro=100_000)
    _use_up(store, key.hash, "gen-1", 50_000, T0)
    store.update_key(key.hash, limit_micro=20_000)
    assert reserve(store, "gen-2", key.hash, 0) is None  # over the limit: not even a free one
    assert store.key_balance(key.hash, T0) == KeyBalance(50_000, 0, 50_000)
    assert store.key_balance(key.hash, T0).remaining(20_000) == 0


def test_a_deleted_key_keeps_its_ledger_and_can_still_close_reservations(store: Store) -> None:
    key, _ = store.create_key("k", limit_micro=100_000)
    _use_up(store, key.hash, "gen-1", 14_000, T0)
    reserve(store, "gen-2", key.hash, 14_000)
    reserve(store, "gen-3", key.hash, 14_000)
    assert store.delete_key(key.hash)
    assert store.settle("gen-2", 14_000, now=T0) is True
    assert store.release("gen-3", now=T0) is True
    assert store.ledger_total(key.hash) == 28_000
    assert store.key_usage(key.hash, T0).total == 28_000


def test_the_ledger_is_append_only(store: Store) -> None:
    key, _ = store.create_key("k", limit_micro=100_000)
    reserve(store, "gen-1", key.hash, 14_000)
    reserve(store, "gen-2", key.hash, 14_000)
    reserve(store, "gen-3", key.hash, 14_000)
    before = store.ledger_entries()
    store.settle("gen-1", 14_000, now=T0)
    store.release("gen-2", now=T0)
    store.sweep_reservations(now=T0 + TTL)
    after = store.ledger_entries()
    assert after[: len(before)] == before  # nothing updated or deleted, only appended
    assert [(e.generation_id, e.kind) for e in after[len(before) :]] == [
        ("gen-1", "settle"),
        ("gen-1", "release"),
        ("gen-2", "settle"),
        ("gen-2", "release"),
        ("gen-3", "settle"),
        ("gen-3", "release"),
    ]
    assert [e.id for e in after] == sorted(e.id for e in after)
    # and the database refuses to change it
    for statement in (
        "UPDATE ledger_entries SET amount_micro = 0",
        "DELETE FROM ledger_entries",
    ):
        with pytest.raises(Exception, match="append-only"), store.engine.begin() as conn:
            conn.execute(text(statement))
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(ledger_entries)) == 9
    assert_consistent(store, key.hash, T0 + TTL)
