"""Per-key rate limits: fixed-window request counters shared by every process on the database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, delete
from sqlalchemy.dialects import postgresql, sqlite

from pixelrouter.periods import check_aware, rate_window
from pixelrouter.store.db import utcnow, write_transaction
from pixelrouter.store.tables import rate_windows

_window = rate_windows.c


class RateLimits:
    """Rate-limit method of `Store`."""

    engine: Engine

    def hit_rate_limit(
        self, key_hash: str, *, requests: int, interval_s: int, now: datetime | None = None
    ) -> int | None:
        """Count one request of the key in the window of `interval_s` seconds holding `now`.

        Returns None when it is within `requests` per window, else the whole seconds (at least
        1) until the window ends: the Retry-After. Refused requests count too.
        """
        if isinstance(requests, bool) or not isinstance(requests, int) or requests < 0:
            raise ValueError(f"requests must be a non-negative integer, not {requests!r}")
        now = check_aware("now", now or utcnow())
        window = rate_window(now, interval_s)
        dialect_insert = (
            postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        )
        first = dialect_insert(rate_windows).values(
            key_hash=key_hash, window_start=window.start, count=1
        )
        upsert = first.on_conflict_do_update(
            index_elements=[_window.key_hash, _window.window_start],
            set_={"count": _window.count + 1},
        ).returning(_window.count)
        with write_transaction(self.engine) as conn:
            count = int(conn.execute(upsert).scalar_one())
            if count == 1:  # the key's first request in a new window: drop its old windows
                conn.execute(
                    delete(rate_windows).where(
                        _window.key_hash == key_hash, _window.window_start < window.start
                    )
                )
        return None if count <= requests else window.retry_after_s(now)
