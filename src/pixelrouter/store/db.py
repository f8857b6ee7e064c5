"""Database URLs and engines: SQLite (WAL, busy timeout, foreign keys) or PostgreSQL (psycopg 3)."""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool

DEFAULT_DATABASE_URL = "sqlite:///./.pixelrouter/pixelrouter.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option that makes a SQLite transaction take the write lock at BEGIN, so a
# read-then-write transaction cannot fail half way with "database is locked".
WRITE_OPTION = "pixelrouter_write"
# PostgreSQL connections one process keeps (and may add under a burst): SQLAlchemy's default
# of 5 + 10 queued the benchmark's 64 threads in the process (pool waits in its p99). 16 + 48
# lets 64 threads each hold one; behind PgBouncer the server sees only PgBouncer's pool.
POSTGRES_POOL_SIZE = 16
POSTGRES_POOL_OVERFLOW = 48
# A pooled PostgreSQL connection idle this long is pinged (`SELECT 1`) before it is lent out;
# one used more recently is lent as it is. SQLAlchemy's pool_pre_ping pinged on every
# checkout: two extra round trips per reserve+settle pair and 20-30 % of its client CPU.
# A connection that died since its last use (a restart within this second) fails its
# statement instead: an OperationalError, which the callers already meet when the server
# goes away mid-transaction (a 503 with Retry-After, the close's retry), and which makes the
# pool drop every connection older than the failure (see `note_disconnect`).
POSTGRES_PING_IDLE_S = 1.0

# One writer at a time per SQLite file inside a process: a thread that would write waits for
# this lock (woken as soon as it is free) instead of in SQLite's busy
# handler, which sleeps and retries and so gave p99s of 1-2 s at 8 and 64 threads (a lucky
# late thread can take the lock ahead of one that is sleeping). Other processes on the
# same file still meet the busy handler. Reentrant: a nested write transaction in the same
# thread reaches SQLite as before. Keyed by the resolved file, so two Stores on one file
# share it; an in-memory database has a single connection and needs none.
_SQLITE_WRITE_LOCKS: dict[str, threading.RLock] = {}
_SQLITE_ENGINE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.RLock] = (
    weakref.WeakKeyDictionary()
)
_SQLITE_LOCKS_GUARD = threading.Lock()


def _fresh_locks_after_fork() -> None:
    # A lock held by another thread at fork would never be released in the child.
    global _SQLITE_LOCKS_GUARD
    _SQLITE_LOCKS_GUARD = threading.Lock()
    fresh = {path: threading.RLock() for path in _SQLITE_WRITE_LOCKS}
    _SQLITE_WRITE_LOCKS.clear()
    _SQLITE_WRITE_LOCKS.update(fresh)
    for engine in list(_SQLITE_ENGINE_LOCKS):
        path = str(Path(engine.url.database or "").expanduser().resolve())
        _SQLITE_ENGINE_LOCKS[engine] = _SQLITE_WRITE_LOCKS.setdefault(path, threading.RLock())


os.register_at_fork(after_in_child=_fresh_locks_after_fork)


def utcnow() -> datetime:
    """The current time, tz-aware UTC."""
    return datetime.now(UTC)


def is_unreachable(exc: BaseException) -> bool:
    """A database that is restarting or out of reach (a dropped connection, a refused one, an
    exhausted pool), not a statement's own fault: the same work may pass in a moment."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def normalize_url(url: str) -> str:
    """Map `postgresql://` / `postgres://` to the psycopg 3 driver; leave other URLs alone."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def create_db_engine(url: str = DEFAULT_DATABASE_URL, **kwargs: Any) -> Engine:
    """An engine for `url`; for a SQLite file, its folder is created first."""
    sa_url = make_url(normalize_url(url))
    backend = sa_url.get_backend_name()
    # A failed statement's message must not carry its parameters into the logs (end users,
    # key hashes, prompts' metadata): SQLAlchemy leaves them out of every error it raises.
    kwargs.setdefault("hide_parameters", True)
    if backend == "sqlite":
        return _sqlite_engine(sa_url.render_as_string(hide_password=False), sa_url.database)
    if backend == "postgresql":
        kwargs.setdefault("pool_size", POSTGRES_POOL_SIZE)
        kwargs.setdefault("max_overflow", POSTGRES_POOL_OVERFLOW)
        kwargs.setdefault("pool_timeout", 60)
        connect_args = kwargs.setdefault("connect_args", {})
        # No server-side prepared statements (psycopg prepares a query after its 5th run): a
        # pooler in transaction mode (PgBouncer) hands the next transaction another server
        # connection, where the name is unknown or already taken. Measured: no slower here.
        connect_args.setdefault("prepare_threshold", None)
        engine = create_engine(sa_url, **kwargs)
        if not kwargs.get("pool_pre_ping"):
            _ping_when_idle(engine)
        return engine
    raise ValueError(
        f"unsupported database URL scheme {sa_url.drivername!r}: use sqlite or postgresql"
    )


def _ping_when_idle(engine: Engine) -> None:
    """Ping a connection at checkout only when it sat idle in the pool for
    POSTGRES_PING_IDLE_S or was opened before the last dropped connection this engine saw."""

    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info["pixelrouter_opened"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["pixelrouter_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        info = record.info
        now = time.monotonic()
        if info.get("pixelrouter_opened", now) < _DISCONNECTED.get(engine, 0.0):
            raise DisconnectionError("opened before a dropped connection")
        idle_since = info.get("pixelrouter_idle_since")
        if idle_since is None or now - idle_since < POSTGRES_PING_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool reconnects this record instead
            note_disconnect(engine)
            raise DisconnectionError(f"idle connection is gone: {type(exc).__name__}") from exc


# When each PostgreSQL engine last saw a dropped connection (monotonic): every connection it
# opened earlier is discarded at its next checkout, as SQLAlchemy does for its own statements.
_DISCONNECTED: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()


def note_disconnect(engine: Engine) -> None:
    """A connection of `engine` was found dropped (the server restarted, or a pooler): its
    pooled siblings, opened before now, are likely gone too and are not lent out again."""
    _DISCONNECTED[engine] = time.monotonic()


def _sqlite_engine(url: str, database: str | None) -> Engine:
    in_memory = database in (None, "", ":memory:")
    if in_memory:
        # Exactly one connection (each would be another empty database), lent to one thread
        # at a time: concurrent callers queue for it.
        engine = create_engine(
            url,
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            connect_args={"check_same_thread": False},
            hide_parameters=True,
        )
    else:
        path = Path(database).expanduser()  # type: ignore[arg-type]
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            pool_size=10,
            max_overflow=40,
            pool_timeout=60,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            hide_parameters=True,
        )
        with _SQLITE_LOCKS_GUARD:
            lock = _SQLITE_WRITE_LOCKS.setdefault(str(path.resolve()), threading.RLock())
            _SQLITE_ENGINE_LOCKS[engine] = lock

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (see _on_begin); sqlite3's implicit BEGIN only covers DML.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


@contextmanager
def write_transaction(engine: Engine, tx: Connection | None = None) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it holds the write lock from its start.

    With `tx` (a connection inside a write transaction already begun), the work joins it:
    several record methods then commit, or roll back, as one."""
    if tx is not None:
        yield tx
        return
    lock = _SQLITE_ENGINE_LOCKS.get(engine)
    if lock is None:
        with engine.connect() as conn:
            conn = conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn
        return
    # As long as SQLite's own busy timeout: then "database is locked", as SQLite would say.
    if not lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
        raise OperationalError("BEGIN IMMEDIATE", None, Exception("database is locked"))
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn
    finally:
        lock.release()
