"""API key rows: create, bootstrap the management key, find, list, update, delete; usage from
the ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Row,
    case,
    cast,
    delete,
    func,
    insert,
    select,
    text,
    true,
    update,
)

from pixelrouter.errors import LastManagementKey
from pixelrouter.keys import (
    KEY_KINDS,
    LIMIT_RESETS,
    KeyKind,
    LimitReset,
    generate_key,
    hash_key,
    key_label,
    looks_like_key,
    period_end,
    period_start,
)
from pixelrouter.store.db import utcnow, write_transaction
from pixelrouter.store.records import KeyRecord, KeyUsage
from pixelrouter.store.tables import api_keys, ledger_entries

ADMIN_KEY_NAME = "admin"
INT32_MAX = 2**31 - 1


# pg_advisory_xact_lock id serialising the management-key bootstrap across replicas.
_BOOTSTRAP_LOCK_ID = 0x70786B6579  # "pxkey"
UPDATABLE_KEY_FIELDS = frozenset(
    {
        "name",
        "disabled",
        "limit_micro",
        "limit_reset",
        "expires_at",
        "rate_limit_requests",
        "rate_limit_interval_s",
    }
)


def _keep_a_management_key(conn: Connection, key_hash: str, values: dict[str, Any] | None) -> None:
    """Refuse a change (None: a deletion) that would leave no usable management key. The
    management keys are locked for the transaction (SQLite's write transaction holds the whole
    database), so two concurrent changes cannot each leave the other as the last."""
    now = utcnow()
    stmt = select(api_keys.c.hash, api_keys.c.disabled, api_keys.c.expires_at).where(
        api_keys.c.kind == "management"
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    usable = [
        row.hash
        for row in conn.execute(stmt)
        if not row.disabled and (row.expires_at is None or row.expires_at > now)
    ]
    if key_hash not in usable:
        return
    stays_usable = (
        values is not None
        and not values.get("disabled")
        and (values.get("expires_at") is None or values["expires_at"] > now)
    )
    if not stays_usable and usable == [key_hash]:
        raise LastManagementKey(
            "This is the last enabled management key: create another management key (pixelrouter "
            "keys create --management) before you disable, expire or delete this one."
        )


class KeyRecords:
    """Key methods of `Store`; plaintext keys are returned once and never written anywhere."""

    engine: Engine

    def create_key(
        self,
        name: str,
        kind: KeyKind = "inference",
        limit_micro: int | None = None,
        limit_reset: LimitReset | None = None,
        expires_at: datetime | None = None,
        rate_limit_requests: int | None = None,
        rate_limit_interval_s: int | None = None,
    ) -> tuple[KeyRecord, str]:
        """Store a new random key; return its record and the plaintext (show it once)."""
        if kind not in KEY_KINDS:
            raise ValueError(f"unknown key kind {kind!r}; expected one of {', '.join(KEY_KINDS)}")
        values = _validated(
            {
                "name": name,
                "limit_micro": limit_micro,
                "limit_reset": limit_reset,
                "expires_at": expires_at,
                "rate_limit_requests": rate_limit_requests,
                "rate_limit_interval_s": rate_limit_interval_s,
            }
        )
        plaintext = generate_key()
        with write_transaction(self.engine) as conn:
            record = _insert_key(conn, plaintext, kind=kind, **values)
        return record, plaintext

    def ensure_management_key(self, plaintext: str | None = None) -> str | None:
        """Make sure a management key exists; return a new plaintext only if one was made.

        With `plaintext` (PIXELROUTER_ADMIN_KEY) its hash is stored as the management key
        "admin" unless already there. Without it, and with no management key stored, a key is
        generated and its plaintext returned for the caller to print once.
        """
        if plaintext is not None and not looks_like_key(plaintext):
            raise ValueError(
                "the admin key must look like sk-pr-v1- followed by 64 lowercase hex digits"
            )
        with write_transaction(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _BOOTSTRAP_LOCK_ID})
            if plaintext is not None:
                key_hash = hash_key(plaintext)
                kind = conn.scalar(select(api_keys.c.kind).where(api_keys.c.hash == key_hash))
                if kind is None:
                    _insert_key(conn, plaintext, kind="management", name=ADMIN_KEY_NAME)
                elif kind != "management":
                    raise ValueError("the admin key is already stored as an inference key")
                else:
                    # The operator's own key always works again after a restart: disabled or
                    # expired, it is the way back in.
                    conn.execute(
                        update(api_keys)
                        .where(
                            api_keys.c.hash == key_hash,
                            (api_keys.c.disabled == true()) | api_keys.c.expires_at.is_not(None),
                        )
                        .values(disabled=False, expires_at=None, updated_at=utcnow())
                    )
                return None
            exists = conn.scalar(
                select(api_keys.c.hash).where(api_keys.c.kind == "management").limit(1)
            )
            if exists is not None:
                return None
            new_plaintext = generate_key()
            _insert_key(conn, new_plaintext, kind="management", name=ADMIN_KEY_NAME)
            return new_plaintext

    def find_key(self, key_hash: str) -> KeyRecord | None:
        """The key stored under `key_hash` (see `keys.hash_key`), if any."""
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.hash == key_hash)).first()
        return None if row is None else _key_record(row)

    def list_keys(self, kind: KeyKind | None = None) -> list[KeyRecord]:
        """All keys (or those of one kind), oldest first."""
        stmt = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.hash)
        if kind is not None:
            stmt = stmt.where(api_keys.c.kind == kind)
        with self.engine.connect() as conn:
            return [_key_record(row) for row in conn.execute(stmt)]

    def update_key(self, key_hash: str, **changes: Any) -> KeyRecord | None:
        """Change some of name, disabled, limit_micro, limit_reset, expires_at, rate limits.

        Returns the updated record, or None when no key has this hash.
        """
        unknown = set(changes) - UPDATABLE_KEY_FIELDS
        if unknown:
            raise TypeError(f"cannot update key field(s): {', '.join(sorted(unknown))}")
        values = _validated(changes)
        values["updated_at"] = utcnow()
        with write_transaction(self.engine) as conn:
            if values.get("disabled") or values.get("expires_at") is not None:
                _keep_a_management_key(conn, key_hash, values)
            result = conn.execute(
                update(api_keys).where(api_keys.c.hash == key_hash).values(**values)
            )
            if result.rowcount == 0:
                return None
            row = conn.execute(select(api_keys).where(api_keys.c.hash == key_hash)).one()
        return _key_record(row)

    def delete_key(self, key_hash: str) -> bool:
        """Delete a key; its generation records stay. Returns whether a key was deleted."""
        with write_transaction(self.engine) as conn:
            _keep_a_management_key(conn, key_hash, None)
            result = conn.execute(delete(api_keys).where(api_keys.c.hash == key_hash))
        return result.rowcount > 0

    def key_usage(self, key_hash: str, now: datetime | None = None) -> KeyUsage:
        """What the ledger settled for the key: in all, and in the UTC day, Monday week and
        month that hold `now`.

        A charge counts in the period in which it was settled.
        """
        now = now or utcnow()
        amount = ledger_entries.c.amount_micro
        settled_at = ledger_entries.c.created_at

        def within(reset: str) -> Any:
            start, end = period_start(reset, now), period_end(reset, now)
            in_period = (settled_at >= start) & (settled_at < end)
            return _sum(case((in_period, amount), else_=0))

        stmt = select(_sum(amount), within("daily"), within("weekly"), within("monthly")).where(
            ledger_entries.c.key_hash == key_hash, ledger_entries.c.kind == "settle"
        )
        with self.engine.connect() as conn:
            total, daily, weekly, monthly = conn.execute(stmt).one()
        return KeyUsage(
            total=int(total), daily=int(daily), weekly=int(weekly), monthly=int(monthly)
        )


def _sum(column: Any) -> Any:
    """SUM as a bigint, 0 when there are no rows (PostgreSQL sums bigints as numeric)."""
    return cast(func.coalesce(func.sum(column), 0), BigInteger)


def _insert_key(conn: Connection, plaintext: str, *, kind: str, **values: Any) -> KeyRecord:
    now = utcnow()
    row = {
        "hash": hash_key(plaintext),
        "label": key_label(plaintext),
        "kind": kind,
        "disabled": False,
        "limit_micro": None,
        "limit_reset": None,
        "expires_at": None,
        "rate_limit_requests": None,
        "rate_limit_interval_s": None,
        "created_at": now,
        "updated_at": now,
        **values,
    }
    conn.execute(insert(api_keys).values(**row))
    return KeyRecord(**row)


def _validated(values: dict[str, Any]) -> dict[str, Any]:
    """Check key fields a caller may set; the database CHECKs are the last line."""
    if "name" in values and not isinstance(values["name"], str):
        raise ValueError("name must be a string")
    if "disabled" in values and not isinstance(values["disabled"], bool):
        raise ValueError("disabled must be true or false")
    for field in ("limit_micro", "rate_limit_requests", "rate_limit_interval_s"):
        value = values.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{field} must be an integer or null")
        if value is not None and value < (1 if field == "rate_limit_interval_s" else 0):
            raise ValueError(
                f"{field} must be {'positive' if field.endswith('_s') else 'zero or more'}"
            )
        # What fits the column on both backends (SQLite would take more than PostgreSQL).
        if value is not None and field != "limit_micro" and value > INT32_MAX:
            raise ValueError(f"{field} must be at most {INT32_MAX}")
    reset = values.get("limit_reset")
    if reset is not None and reset not in LIMIT_RESETS:
        raise ValueError(f"limit_reset must be one of {', '.join(LIMIT_RESETS)} or null")
    expires_at = values.get("expires_at")
    if expires_at is not None and (
        not isinstance(expires_at, datetime) or expires_at.tzinfo is None
    ):
        raise ValueError("expires_at must be a timezone-aware datetime or null")
    return dict(values)


def _key_record(row: Row[Any]) -> KeyRecord:
    m = row._mapping
    return KeyRecord(
        hash=m["hash"],
        name=m["name"],
        label=m["label"],
        kind=m["kind"],
        disabled=bool(m["disabled"]),
        limit_micro=None if m["limit_micro"] is None else int(m["limit_micro"]),
        limit_reset=m["limit_reset"],
        expires_at=m["expires_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        rate_limit_requests=m["rate_limit_requests"],
        rate_limit_interval_s=m["rate_limit_interval_s"],
    )
