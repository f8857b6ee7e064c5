"""`Store`: one database (SQLite file or PostgreSQL) holding keys, generation records, the
billing ledger, rate-limit counters, provider outcomes and batches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from sqlalchemy import Connection, Engine

from pixelrouter.store import migrate as migrations
from pixelrouter.store.activity_records import ActivityRecords
from pixelrouter.store.balance_records import BalanceRecords
from pixelrouter.store.batch_claims import BatchClaims
from pixelrouter.store.batch_records import BatchRecords
from pixelrouter.store.db import (
    DEFAULT_DATABASE_URL,
    create_db_engine,
    normalize_url,
    write_transaction,
)
from pixelrouter.store.generation_records import GenerationRecords
from pixelrouter.store.key_records import KeyRecords
from pixelrouter.store.ledger_records import LedgerRecords
from pixelrouter.store.rate_limits import RateLimits
from pixelrouter.store.request_records import RequestRecords
from pixelrouter.store.stats_records import StatsRecords


class Store(
    KeyRecords,
    GenerationRecords,
    LedgerRecords,
    BalanceRecords,
    RequestRecords,
    RateLimits,
    ActivityRecords,
    StatsRecords,
    BatchRecords,
    BatchClaims,
):
    """Sync, thread-safe access to the database; each method is one short transaction, or
    joins the one passed as `tx` (from `transaction()`) so several commit as one.

    Call `migrate()` once at start. Async callers run methods in a thread pool.
    """

    def __init__(self, url: str = DEFAULT_DATABASE_URL) -> None:
        self.url = normalize_url(url)
        self.engine: Engine = create_db_engine(self.url)

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Upgrade the schema to the newest migration (Alembic `upgrade head`)."""
        migrations.upgrade(self.engine)

    def schema_revision(self) -> str | None:
        """The migration the database is at (None: empty); compare with `head_revision()`."""
        return migrations.current_revision(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction for several record methods (pass it as their `tx`)."""
        with write_transaction(self.engine) as tx:
            yield tx

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"
