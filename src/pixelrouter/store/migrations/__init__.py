"""Alembic migrations of the pixelrouter schema (run by `Store.migrate()`)."""
