"""Key format, hashing, labels and limit periods (pure functions, no database)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from pixelrouter.keys import (
    generate_key,
    hash_key,
    key_label,
    looks_like_key,
    looks_like_key_hash,
    period_end,
    period_start,
)


def test_generated_keys_have_the_spec_format_and_differ() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert re.fullmatch(r"sk-pr-v1-[0-9a-f]{64}", key)
        assert looks_like_key(key)


def test_hash_is_sha256_hex_of_the_plaintext() -> None:
    key = generate_key()
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert looks_like_key_hash(hash_key(key))
    assert not looks_like_key_hash(key)


def test_label_shows_prefix_and_three_hex_digits_each_side() -> None:
    key = "sk-pr-v1-abc" + "0" * 58 + "f09"
    assert key_label(key) == "sk-pr-v1-abc...f09"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sk-pr-v1-",
        "sk-pr-v1-" + "A" * 64,  # uppercase
        "sk-pr-v1-" + "0" * 63,
        "sk-pr-v1-" + "0" * 65,
        "sk-or-v1-" + "0" * 64,
        " sk-pr-v1-" + "0" * 64,
    ],
)
def test_malformed_keys_are_recognised(text: str) -> None:
    assert not looks_like_key(text)
    with pytest.raises(ValueError):
        key_label(text)


def test_period_starts_at_midnight_utc_monday_and_first_of_month() -> None:
    now = datetime(2026, 3, 4, 15, 30, tzinfo=UTC)  # a Wednesday
    assert period_start("daily", now) == datetime(2026, 3, 4, tzinfo=UTC)
    assert period_start("weekly", now) == datetime(2026, 3, 2, tzinfo=UTC)
    assert period_start("monthly", now) == datetime(2026, 3, 1, tzinfo=UTC)
    # a Monday is its own week start; the week may start in the previous month
    monday = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
    assert period_start("weekly", monday) == monday
    assert period_start("weekly", datetime(2026, 5, 31, 23, 59, tzinfo=UTC)) == datetime(
        2026, 5, 25, tzinfo=UTC
    )


def test_period_start_converts_other_time_zones_to_utc() -> None:
    # 01:00 on Monday in UTC+2 is 23:00 on Sunday in UTC: still the previous week.
    now = datetime(2026, 6, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert period_start("daily", now) == datetime(2026, 5, 31, tzinfo=UTC)
    assert period_start("weekly", now) == datetime(2026, 5, 25, tzinfo=UTC)


def test_period_start_rejects_naive_times_and_unknown_resets() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        period_start("daily", datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="limit_reset"):
        period_start("yearly", datetime(2026, 1, 1, tzinfo=UTC))


def test_period_end_is_the_next_reset() -> None:
    now = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)  # a Thursday
    assert period_end("daily", now) == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_end("weekly", now) == datetime(2027, 1, 4, tzinfo=UTC)
    assert period_end("monthly", now) == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_end("monthly", datetime(2026, 2, 10, tzinfo=UTC)) == datetime(
        2026, 3, 1, tzinfo=UTC
    )
