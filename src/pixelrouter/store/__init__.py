"""Storage: SQLite by default, PostgreSQL by URL; tables, Alembic migrations and the `Store`."""

from pixelrouter.store.db import DEFAULT_DATABASE_URL, normalize_url, utcnow
from pixelrouter.store.records import (
    GenerationApi,
    GenerationRecord,
    GenerationState,
    KeyRecord,
    KeyUsage,
    NewGeneration,
)
from pixelrouter.store.store import Store

__all__ = [
    "DEFAULT_DATABASE_URL",
    "GenerationApi",
    "GenerationRecord",
    "GenerationState",
    "KeyRecord",
    "KeyUsage",
    "NewGeneration",
    "Store",
    "normalize_url",
    "utcnow",
]
