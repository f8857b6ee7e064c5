"""Ledger arithmetic without a database: limit periods, amounts, fixed rate-limit windows.

On the ground floor, beside `keys.py`, so that both the store (which keeps the ledger,
`pixelrouter.store.ledger_records`, and the balance counters, `balance_records`) and billing
(which decides what to write) use one definition: which period a moment falls in, what a valid
amount is, when a rate-limit window ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from pixelrouter.keys import LimitReset, period_start

ReservationState = Literal["open", "settled", "released"]
LedgerEntryKind = Literal["reserve", "settle", "release"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def limit_period_start(reset: LimitReset | str | None, now: datetime) -> datetime | None:
    """Start of the limit period holding `now`; None for a limit without reset (all time)."""
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    return None if reset is None else period_start(reset, now)


def check_micro(name: str, value: object) -> int:
    """`value` if it is a non-negative int of micro-dollars (never a float, never a bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer number of micro-dollars, not {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be zero or more micro-dollars, not {value}")
    return value


def check_aware(name: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value


@dataclass(frozen=True)
class RateWindow:
    """One fixed rate-limit window: `[start, start + interval_s)` in epoch seconds."""

    start: int
    interval_s: int

    @property
    def end(self) -> int:
        return self.start + self.interval_s

    def retry_after_s(self, now: datetime) -> int:
        """Whole seconds (at least 1) from `now` until the window ends: the Retry-After."""
        left = EPOCH + timedelta(seconds=self.end) - now
        return max(1, -(-left // _SECOND))


def rate_window(now: datetime, interval_s: int) -> RateWindow:
    """The window of `interval_s` seconds holding `now`: `floor(now / interval) * interval`."""
    if isinstance(interval_s, bool) or not isinstance(interval_s, int) or interval_s < 1:
        raise ValueError(f"interval_s must be a positive integer, not {interval_s!r}")
    seconds = (check_aware("now", now) - EPOCH) // _SECOND
    return RateWindow(start=seconds - seconds % interval_s, interval_s=interval_s)
