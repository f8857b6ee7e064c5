"""Test database URLs for both backends: a SQLite file, or a fresh PostgreSQL database.

PostgreSQL comes from PIXELROUTER_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test): each test run creates one uniquely named database
there (dropped at exit), and each `fresh_postgres_url()` is a new empty schema in it (dropped
after use); `fresh_postgres_database()` gives a whole database of its own instead. When the
server cannot be reached, PostgreSQL tests are skipped with a loud reason, except under CI=true,
where they fail.

    from dbutil import BACKENDS, database_url

    @pytest.fixture(params=BACKENDS)
    def db_url(request, tmp_path):
        with database_url(request.param, tmp_path) as url:
            yield url
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

BACKENDS = ("sqlite", "postgresql")
# The race tests also run through PgBouncer in transaction pooling mode (tests/pgbouncer.py).
BACKENDS_AND_PGBOUNCER = (*BACKENDS, "pgbouncer")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
RUN_PREFIX = "pixelrouter_testrun"
START_HINT = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def postgres_admin_url() -> str:
    """The database in which test databases are created (and which must already exist)."""
    return os.environ.get("PIXELROUTER_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def sqlite_url(tmp_path: Path, name: str = "pixelrouter.db") -> str:
    """A SQLite URL for a file under `tmp_path` (created on first connect)."""
    return f"sqlite:///{tmp_path / name}"


@functools.cache
def postgres_unavailable_reason() -> str | None:
    """Why PostgreSQL tests cannot run here, or None when they can (checked once per run)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    try:
        with psycopg.connect(_libpq_url(postgres_admin_url()), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure to connect means: no server for us
        return f"cannot connect to {_safe(postgres_admin_url())}: {exc}".strip()
    return None


def require_postgres() -> None:
    """Skip the calling test loudly when PostgreSQL is unreachable; fail instead under CI=true."""
    reason = postgres_unavailable_reason()
    if reason is None:
        return
    message = (
        f"PostgreSQL tests NOT RUN: {' '.join(reason.split()).rstrip('.')}. "
        f"Start the server ({START_HINT}) "
        "or set PIXELROUTER_TEST_POSTGRES_URL."
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} CI=true, so this is a failure.", pytrace=False)
    warnings.warn(message, pytest.PytestWarning, stacklevel=2)
    pytest.skip(message)


@contextmanager
def fresh_postgres_url() -> Iterator[str]:
    """Yield the URL of an empty schema of its own (cheap); drop the schema afterwards.

    The schema lives in this run's test database and is the URL's `search_path`, so to the
    code under test it is an empty database.
    """
    require_postgres()
    import psycopg

    database_url_ = _run_database()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    libpq = _libpq_url(database_url_)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = make_url(database_url_).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def fresh_postgres_database(prefix: str = "pixelrouter_test") -> Iterator[str]:
    """Create a whole, uniquely named database; yield its URL; drop it afterwards (slower)."""
    require_postgres()
    name = _create_database(prefix)
    try:
        yield _database_url(name)
    finally:
        _drop_database(name)


@functools.cache
def _run_database() -> str:
    """This test run's database, created on first use and dropped when the process exits."""
    _drop_databases_of_dead_runs()
    name = _create_database(RUN_PREFIX)
    atexit.register(_drop_database, name)
    return _database_url(name)


def _create_database(prefix: str) -> str:
    import psycopg

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq_url(postgres_admin_url()), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(_libpq_url(postgres_admin_url()), autocommit=True) as conn:
        # FORCE: engines a test forgot to close must not keep the database alive.
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drop_databases_of_dead_runs() -> None:
    """Drop run databases left by killed test processes (their pid is in the name)."""
    import psycopg

    with psycopg.connect(_libpq_url(postgres_admin_url()), autocommit=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{RUN_PREFIX}_%",)
            )
        ]
    for name in names:
        pid = name.removeprefix(f"{RUN_PREFIX}_").split("_")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            with contextlib.suppress(Exception):
                _drop_database(name)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _database_url(name: str) -> str:
    return make_url(postgres_admin_url()).set(database=name).render_as_string(hide_password=False)


@contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of `backend` ("sqlite" or "postgresql") for one test."""
    if backend == "sqlite":
        yield sqlite_url(tmp_path)
    elif backend == "postgresql":
        with fresh_postgres_url() as url:
            yield url
    elif backend == "pgbouncer":
        with bounced_postgres_url() as url:
            yield url
    else:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


@functools.cache
def _session_pgbouncer() -> object:
    """One PgBouncer (transaction pooling) in front of the test server for the whole run."""
    from pgbouncer import pgbouncer

    admin = make_url(postgres_admin_url())
    running = pgbouncer(upstream_port=admin.port or 5432, upstream_host=admin.host or "127.0.0.1")
    bouncer = running.__enter__()
    atexit.register(running.__exit__, None, None, None)
    return bouncer


@contextmanager
def bounced_postgres_url() -> Iterator[str]:
    """A fresh database of its own reached through PgBouncer in transaction pooling mode. Not a
    schema: PgBouncer forwards no `options=-csearch_path=...` (session state)."""
    require_postgres()
    bouncer = _session_pgbouncer()
    with fresh_postgres_database("pixelrouter_bounced") as url:
        yield bouncer.url_for(url)  # type: ignore[attr-defined]


def _libpq_url(url: str) -> str:
    """A URL libpq understands (no SQLAlchemy `+driver` suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
