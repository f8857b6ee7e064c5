"""Fixtures: every store test runs on SQLite and on PostgreSQL (see tests/dbutil.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dbutil import BACKENDS, database_url
from pixelrouter.store import Store


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty database, once per backend."""
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated, empty store."""
    s = Store(db_url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()
