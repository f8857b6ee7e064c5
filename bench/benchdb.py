"""Fresh databases for the benchmarks: a SQLite file in a temporary folder, or a uniquely named
PostgreSQL database (PIXELROUTER_BENCH_POSTGRES_URL, default the local `test` database's
server) that is dropped afterwards."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_admin_url() -> str:
    return os.environ.get("PIXELROUTER_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def database(backend: str, sqlite_name: str = "bench.db") -> Iterator[str]:
    """The URL of a fresh, empty database of `backend`, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="pixelrouter-bench-") as folder:
            yield f"sqlite:///{Path(folder) / sqlite_name}"
        return
    import psycopg

    admin = postgres_admin_url()
    name = f"pixelrouter_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(admin), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(admin), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
