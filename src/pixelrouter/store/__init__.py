"""Storage: SQLite by default, PostgreSQL by URL; tables, Alembic migrations and the `Store`."""

from pixelrouter.store.db import DEFAULT_DATABASE_URL, is_unreachable, normalize_url, utcnow
from pixelrouter.store.records import (
    ActivityRow,
    GenerationApi,
    GenerationRecord,
    GenerationState,
    KeyBalance,
    KeyRecord,
    KeyUsage,
    LedgerEntry,
    NewGeneration,
    Reservation,
)
from pixelrouter.store.store import Store

__all__ = [
    "DEFAULT_DATABASE_URL",
    "ActivityRow",
    "GenerationApi",
    "GenerationRecord",
    "GenerationState",
    "KeyBalance",
    "KeyRecord",
    "KeyUsage",
    "LedgerEntry",
    "NewGeneration",
    "Reservation",
    "Store",
    "is_unreachable",
    "normalize_url",
    "utcnow",
]
