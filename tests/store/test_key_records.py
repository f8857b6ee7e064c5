"""Key records: create, find, list, update, delete, the admin bootstrap; plaintext never stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select

from pixelrouter.errors import LastManagementKey
from pixelrouter.keys import generate_key, hash_key, key_label, looks_like_key
from pixelrouter.store import NewGeneration, Store


def test_create_and_find_a_key(store: Store) -> None:
    expires = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    record, plaintext = store.create_key(
        "ci", limit_micro=5_000_000, limit_reset="monthly", expires_at=expires
    )
    assert looks_like_key(plaintext)
    assert record.hash == hash_key(plaintext)
    assert record.label == key_label(plaintext)
    assert (record.name, record.kind, record.disabled) == ("ci", "inference", False)
    assert (record.limit_micro, record.limit_reset, record.expires_at) == (
        5_000_000,
        "monthly",
        expires,
    )
    assert not record.is_management
    found = store.find_key(hash_key(plaintext))
    assert found == record
    assert found is not None and found.created_at.tzinfo is not None
    assert found.created_at.utcoffset() == timedelta(0)
    assert store.find_key(hash_key(generate_key())) is None


def test_datetimes_come_back_utc_whatever_zone_went_in(store: Store) -> None:
    paris = timezone(timedelta(hours=1))
    record, _ = store.create_key("tz", expires_at=datetime(2027, 1, 1, 13, 0, tzinfo=paris))
    found = store.find_key(record.hash)
    assert found is not None and found.expires_at == datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    assert found.expires_at.tzinfo == UTC
    assert found.is_expired(datetime(2027, 1, 1, 12, 0, tzinfo=UTC))
    assert not found.is_expired(datetime(2027, 1, 1, 11, 59, tzinfo=UTC))


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.create_key("naive", expires_at=datetime(2027, 1, 1))


def test_large_limits_fit(store: Store) -> None:
    record, _ = store.create_key("whale", limit_micro=10**15)  # a billion dollars
    assert store.find_key(record.hash).limit_micro == 10**15  # type: ignore[union-attr]


def test_list_keys_oldest_first_and_by_kind(store: Store) -> None:
    a, _ = store.create_key("a")
    b, _ = store.create_key("b")
    m, _ = store.create_key("m", kind="management")
    assert [k.hash for k in store.list_keys()] == [a.hash, b.hash, m.hash]
    assert [k.hash for k in store.list_keys(kind="inference")] == [a.hash, b.hash]
    assert [k.hash for k in store.list_keys(kind="management")] == [m.hash]


def test_update_key(store: Store) -> None:
    record, _ = store.create_key("before")
    expires = datetime(2030, 5, 6, tzinfo=UTC)
    updated = store.update_key(
        record.hash,
        name="after",
        disabled=True,
        limit_micro=1_000,
        limit_reset="weekly",
        expires_at=expires,
        rate_limit_requests=10,
        rate_limit_interval_s=60,
    )
    assert updated is not None
    assert (updated.name, updated.disabled, updated.limit_micro) == ("after", True, 1_000)
    assert (updated.limit_reset, updated.expires_at) == ("weekly", expires)
    assert (updated.rate_limit_requests, updated.rate_limit_interval_s) == (10, 60)
    assert updated.updated_at >= record.updated_at
    assert updated.created_at == record.created_at
    assert store.find_key(record.hash) == updated
    # None clears a limit; fields not named stay as they are
    cleared = store.update_key(record.hash, limit_micro=None, limit_reset=None)
    assert cleared is not None
    assert (cleared.limit_micro, cleared.limit_reset, cleared.name) == (None, None, "after")


def test_update_unknown_key_returns_none(store: Store) -> None:
    assert store.update_key(hash_key(generate_key()), name="x") is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"limit_reset": "yearly"}, "limit_reset"),
        ({"limit_micro": -1}, "limit_micro"),
        ({"limit_micro": 1.5}, "limit_micro"),
        ({"disabled": "yes"}, "disabled"),
        ({"expires_at": datetime(2030, 1, 1)}, "expires_at"),
        ({"rate_limit_interval_s": 0}, "rate_limit_interval_s"),
    ],
)
def test_update_refuses_bad_values(store: Store, changes: dict, message: str) -> None:
    record, _ = store.create_key("k")
    with pytest.raises(ValueError, match=message):
        store.update_key(record.hash, **changes)
    assert store.find_key(record.hash) == record


def test_update_refuses_fields_that_are_not_updatable(store: Store) -> None:
    record, _ = store.create_key("k")
    with pytest.raises(TypeError, match="kind"):
        store.update_key(record.hash, kind="management")
    with pytest.raises(TypeError, match="hash"):
        store.update_key(record.hash, hash="0" * 64)


def test_create_refuses_unknown_kind(store: Store) -> None:
    with pytest.raises(ValueError, match="kind"):
        store.create_key("k", kind="superuser")  # type: ignore[arg-type]


def test_delete_key(store: Store) -> None:
    record, _ = store.create_key("gone")
    keep, _ = store.create_key("kept")
    assert store.delete_key(record.hash) is True
    assert store.delete_key(record.hash) is False
    assert store.find_key(record.hash) is None
    assert [k.hash for k in store.list_keys()] == [keep.hash]


def test_deleting_a_key_keeps_its_generations(store: Store) -> None:
    record, _ = store.create_key("gone")
    store.start_generation(
        NewGeneration(id="gen-kept", model="m", api="images", key_hash=record.hash)
    )
    store.delete_key(record.hash)
    assert store.get_generation("gen-kept") is not None


def test_ensure_management_key_generates_one_once(store: Store) -> None:
    plaintext = store.ensure_management_key(None)
    assert plaintext is not None and looks_like_key(plaintext)
    record = store.find_key(hash_key(plaintext))
    assert record is not None
    assert (record.kind, record.name, record.label) == ("management", "admin", key_label(plaintext))
    # a management key exists now: nothing new, nothing to print
    assert store.ensure_management_key(None) is None
    assert len(store.list_keys(kind="management")) == 1


def test_ensure_management_key_stores_the_given_key(store: Store) -> None:
    given = generate_key()
    assert store.ensure_management_key(given) is None
    record = store.find_key(hash_key(given))
    assert record is not None and record.is_management and record.name == "admin"
    assert store.ensure_management_key(given) is None  # already there
    assert len(store.list_keys()) == 1
    # with a management key stored, no key is generated either
    assert store.ensure_management_key(None) is None
    assert len(store.list_keys()) == 1


def test_ensure_management_key_adds_a_given_key_beside_existing_ones(store: Store) -> None:
    generated = store.ensure_management_key(None)
    given = generate_key()
    assert store.ensure_management_key(given) is None
    hashes = {k.hash for k in store.list_keys(kind="management")}
    assert hashes == {hash_key(generated or ""), hash_key(given)}


def test_ensure_management_key_refuses_bad_or_clashing_keys(store: Store) -> None:
    with pytest.raises(ValueError, match="sk-pr-v1-"):
        store.ensure_management_key("hunter2")
    record, plaintext = store.create_key("inference")
    with pytest.raises(ValueError, match="inference key"):
        store.ensure_management_key(plaintext)
    assert store.find_key(record.hash) == record
    assert store.list_keys(kind="management") == []


def test_the_last_usable_management_key_cannot_disable_expire_or_delete_itself(
    store: Store,
) -> None:
    admin = generate_key()
    store.ensure_management_key(admin)
    admin_hash = hash_key(admin)
    past = datetime.now(UTC) - timedelta(days=1)
    for change in ({"disabled": True}, {"expires_at": past}):
        with pytest.raises(LastManagementKey, match="last enabled management key"):
            store.update_key(admin_hash, **change)
    with pytest.raises(LastManagementKey):
        store.delete_key(admin_hash)
    record = store.find_key(admin_hash)
    assert record is not None and not record.disabled and record.expires_at is None
    # Renaming it, or a later expiry, is fine; so is any change to an inference key.
    assert store.update_key(admin_hash, name="ops") is not None
    inference, _ = store.create_key("app")
    assert store.update_key(inference.hash, disabled=True) is not None
    # With a second management key, either may go.
    second, _ = store.create_key("backup", kind="management")
    assert store.update_key(admin_hash, disabled=True) is not None
    with pytest.raises(LastManagementKey):
        store.delete_key(second.hash)


def test_restarting_with_the_admin_key_enables_it_again(store: Store) -> None:
    admin = generate_key()
    store.ensure_management_key(admin)
    backup, _ = store.create_key("backup", kind="management")
    store.update_key(hash_key(admin), disabled=True)
    store.update_key(backup.hash, expires_at=datetime.now(UTC) + timedelta(seconds=1))
    store.ensure_management_key(admin)  # what `pixelrouter serve` does at start
    record = store.find_key(hash_key(admin))
    assert record is not None and not record.disabled and record.expires_at is None


def test_plaintext_is_never_stored(store: Store, db_url: str, tmp_path: Path) -> None:
    plaintexts = [store.create_key(f"k{i}")[1] for i in range(3)]
    plaintexts.append(store.create_key("m", kind="management")[1])
    given = generate_key()
    store.ensure_management_key(given)
    plaintexts.append(given)
    store.update_key(hash_key(plaintexts[0]), name="renamed", limit_micro=7)
    for i, plaintext in enumerate(plaintexts):
        gen_id = f"gen-{i}"
        store.start_generation(
            NewGeneration(id=gen_id, model="m", api="chat", key_hash=hash_key(plaintext))
        )
        store.finish_generation(gen_id, state="succeeded", total_cost_micro=14_000)
    secrets = [p for p in plaintexts] + [p.removeprefix("sk-pr-v1-") for p in plaintexts]

    reflected = MetaData()
    reflected.reflect(store.engine)
    assert {"api_keys", "generations"} <= set(reflected.tables)
    rows_seen = 0
    with store.engine.connect() as conn:
        for table in reflected.sorted_tables:
            for row in conn.execute(select(table)):
                rows_seen += 1
                for value in row:
                    for secret in secrets:
                        assert secret not in str(value), f"plaintext found in {table.name}"
    assert rows_seen >= 2 * len(plaintexts)

    if db_url.startswith("sqlite"):
        store.close()  # the raw bytes too, WAL included
        for path in tmp_path.glob("pixelrouter.db*"):
            raw = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in raw, path.name
