"""Fixtures: the statistics' store tests run on SQLite and on PostgreSQL (see tests/dbutil.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pixelrouter.store import Store


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated, empty store (`db_url` is one per backend, from tests/conftest.py)."""
    s = Store(db_url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()
