"""How the Store's connections behave around contention and dropped connections: SQLite
writers of one process queue for a lock of the process; a PostgreSQL pool without a ping on
every checkout still never lends out, twice, a connection the server dropped."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from dbutil import database_url
from pixelrouter.store import Store
from pixelrouter.store import db as store_db

EXPIRES = datetime.now(UTC) + timedelta(days=1)


@pytest.fixture
def pg_store(tmp_path: Path) -> Iterator[Store]:
    with database_url("postgresql", tmp_path) as url:
        store = Store(url)
        store.migrate()
        try:
            yield store
        finally:
            store.close()


def _pair(store: Store, key_hash: str) -> None:
    generation_id = f"gen-{uuid.uuid4().hex}"
    assert store.reserve(
        generation_id=generation_id, key_hash=key_hash, amount_micro=10, expires_at=EXPIRES
    )
    assert store.settle(generation_id, 10)


def _drop_server_connections(store: Store) -> None:
    """What a restart does to the pool: every other connection of this database is gone."""
    with store.engine.connect() as conn:
        conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        conn.commit()


def _fill_pool(store: Store, connections: int) -> None:
    held = [store.engine.connect() for _ in range(connections)]
    for conn in held:
        conn.exec_driver_sql("SELECT 1")
        conn.close()


def test_sqlite_writers_of_one_process_share_one_lock_per_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'px.db'}"
    with Store(url) as one, Store(url) as two:
        one.migrate()
        lock = store_db._SQLITE_ENGINE_LOCKS[one.engine]
        assert store_db._SQLITE_ENGINE_LOCKS[two.engine] is lock
        key_hash = one.create_key("k")[0].hash
        entered = threading.Event()
        wrote = threading.Event()

        def other() -> None:
            entered.set()
            _pair(two, key_hash)  # waits for the lock, not in SQLite's busy handler
            wrote.set()

        with one.transaction():
            thread = threading.Thread(target=other)
            thread.start()
            entered.wait(5)
            time.sleep(0.2)
            assert not wrote.is_set()
        thread.join(10)
        assert wrote.is_set()
        assert one.ledger_total(key_hash) == 10


def test_postgresql_checkout_does_not_ping_a_connection_in_use(pg_store: Store) -> None:
    pings = 0
    ping = pg_store.engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        nonlocal pings
        pings += 1
        return ping(dbapi_connection)  # type: ignore[arg-type]

    pg_store.engine.dialect.do_ping = counted  # type: ignore[method-assign]
    key_hash = pg_store.create_key("k", limit_micro=10**9)[0].hash
    for _ in range(20):
        _pair(pg_store, key_hash)
    assert pings == 0


def test_postgresql_a_dropped_connection_fails_once_and_the_pool_recovers(
    pg_store: Store,
) -> None:
    """Used within the idle window, a dropped connection is not pinged: its statement fails
    (as one would mid-transaction), and every connection opened before it is discarded."""
    key_hash = pg_store.create_key("k", limit_micro=10**9)[0].hash
    _fill_pool(pg_store, 4)
    _drop_server_connections(pg_store)
    failures = 0
    for _ in range(8):
        try:
            _pair(pg_store, key_hash)
        except OperationalError:
            failures += 1
    assert failures <= 1
    assert pg_store.ledger_total(key_hash) == 10 * (8 - failures)
    assert not pg_store.open_reservations()


def test_postgresql_an_idle_dropped_connection_is_pinged_and_replaced(
    pg_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_hash = pg_store.create_key("k", limit_micro=10**9)[0].hash
    _fill_pool(pg_store, 4)
    _drop_server_connections(pg_store)
    monkeypatch.setattr(store_db, "POSTGRES_PING_IDLE_S", 0.0)
    for _ in range(8):
        _pair(pg_store, key_hash)  # never fails: each dropped one is pinged and replaced
    assert pg_store.ledger_total(key_hash) == 80
