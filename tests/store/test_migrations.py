"""Alembic creates the whole schema on both backends, and upgrading again changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from pixelrouter.store import DEFAULT_DATABASE_URL, Store, normalize_url
from pixelrouter.store.migrate import current_revision, head_revision, upgrade
from pixelrouter.store.tables import metadata


def test_migrate_creates_every_table_column_and_index(db_url: str) -> None:
    with Store(db_url) as store:
        assert current_revision(store.engine) is None
        store.migrate()
        assert current_revision(store.engine) == head_revision() == store.schema_revision()
        insp = inspect(store.engine)
        assert {"api_keys", "generations", "alembic_version"} <= set(insp.get_table_names())
        for table in metadata.sorted_tables:
            columns = {c["name"] for c in insp.get_columns(table.name)}
            assert columns == set(table.columns.keys()), table.name
        indexes = {ix["name"]: ix["column_names"] for ix in insp.get_indexes("generations")}
        assert indexes["ix_generations_key_hash_created_at"] == ["key_hash", "created_at"]
        assert indexes["ix_generations_created_at"] == ["created_at"]


def test_migrations_match_the_table_definitions(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_upgrade_twice_is_a_no_op_that_keeps_data(store: Store) -> None:
    record, _ = store.create_key("kept")
    store.migrate()
    upgrade(store.engine)
    assert current_revision(store.engine) == head_revision()
    assert store.find_key(record.hash) == record
    with store.engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM alembic_version")) == 1


def test_two_stores_migrating_the_same_database(db_url: str) -> None:
    with Store(db_url) as first, Store(db_url) as second:
        first.migrate()
        second.migrate()
        assert current_revision(second.engine) == head_revision()


def test_default_url_is_a_sqlite_file_under_dot_pixelrouter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_DATABASE_URL == "sqlite:///./.pixelrouter/pixelrouter.db"
    with Store() as store:
        store.migrate()
        assert store.backend == "sqlite"
        assert (tmp_path / ".pixelrouter" / "pixelrouter.db").is_file()


def test_sqlite_runs_in_wal_mode_with_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path}/nested/dir/p.db") as store:
        store.migrate()
        with store.engine.connect() as conn:
            assert conn.scalar(text("PRAGMA journal_mode")) == "wal"
            assert conn.scalar(text("PRAGMA busy_timeout")) >= 5000
            assert conn.scalar(text("PRAGMA foreign_keys")) == 1


def test_in_memory_sqlite_works_across_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with Store("sqlite:///:memory:") as store:
        store.migrate()
        with ThreadPoolExecutor(4) as pool:
            names = list(pool.map(lambda i: store.create_key(f"k{i}")[0].name, range(8)))
        assert sorted(k.name for k in store.list_keys()) == sorted(names)


def test_postgresql_urls_use_psycopg_3() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_unsupported_url_is_refused() -> None:
    with pytest.raises(ValueError, match="use sqlite or postgresql"):
        Store("mysql://u@h/db")


def test_downgrade_to_base_and_back(store: Store) -> None:
    from alembic import command

    from pixelrouter.store.migrate import alembic_config

    config = alembic_config()
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert "generations" not in inspect(store.engine).get_table_names()
    store.migrate()
    with store.engine.connect() as conn:
        assert conn.execute(select(metadata.tables["generations"])).all() == []


def test_migrations_ship_inside_the_package() -> None:
    from pixelrouter.store.migrate import MIGRATIONS_DIR

    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert any(p.name.startswith("0001_") for p in (MIGRATIONS_DIR / "versions").iterdir())
