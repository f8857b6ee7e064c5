"""The billing ledger: key balances, reservations, append-only ledger entries, rate windows.

Generations finished before this revision are carried into the ledger (a reservation settled
at their cost), so keys keep the usage they had.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_MESSAGE = "ledger_entries is append-only"


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "key_balances",
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("period_start", _timestamp(), nullable=True),
        sa.Column("period_used_micro", sa.BigInteger(), nullable=False),
        sa.Column("reserved_micro", sa.BigInteger(), nullable=False),
        sa.Column("total_used_micro", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name="pk_key_balances"),
        sa.ForeignKeyConstraint(
            ["key_hash"],
            ["api_keys.hash"],
            name="fk_key_balances_key_hash_api_keys",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("period_used_micro >= 0", name="ck_key_balances_period_used_micro"),
        sa.CheckConstraint("reserved_micro >= 0", name="ck_key_balances_reserved_micro"),
        sa.CheckConstraint("total_used_micro >= 0", name="ck_key_balances_total_used_micro"),
    )
    op.create_table(
        "reservations",
        sa.Column("generation_id", sa.String(64), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("settled_micro", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("expires_at", _timestamp(), nullable=False),
        sa.Column("finished_at", _timestamp(), nullable=True),
        sa.PrimaryKeyConstraint("generation_id", name="pk_reservations"),
        sa.CheckConstraint(
            "state IN ('open', 'settled', 'released')", name="ck_reservations_state"
        ),
        sa.CheckConstraint("amount_micro >= 0", name="ck_reservations_amount_micro"),
        sa.CheckConstraint(
            "settled_micro >= 0 AND settled_micro <= amount_micro",
            name="ck_reservations_settled_micro",
        ),
    )
    op.create_index("ix_reservations_state_expires_at", "reservations", ["state", "expires_at"])
    op.create_index("ix_reservations_key_hash", "reservations", ["key_hash"])
    op.create_table(
        "ledger_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("generation_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_entries"),
        sa.UniqueConstraint("generation_id", "kind", name="uq_ledger_entries_generation_id_kind"),
        sa.CheckConstraint(
            "kind IN ('reserve', 'settle', 'release')", name="ck_ledger_entries_kind"
        ),
        sa.CheckConstraint("amount_micro >= 0", name="ck_ledger_entries_amount_micro"),
    )
    op.create_index(
        "ix_ledger_entries_key_hash_kind_created_at",
        "ledger_entries",
        ["key_hash", "kind", "created_at"],
    )
    op.create_table(
        "rate_windows",
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", "window_start", name="pk_rate_windows"),
    )
    _create_append_only_triggers()
    _carry_over_finished_generations()


def _create_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER ledger_entries_no_{event.lower()} BEFORE {event} "
                f"ON ledger_entries BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
            )
        return
    op.execute(
        "CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}'; END $$"
    )
    op.execute(
        "CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries "
        "FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()"
    )


def _carry_over_finished_generations() -> None:
    """Each finished, charged generation becomes a settled reservation with its three entries;
    each key gets its balance (period NULL: recounted from the ledger on first use)."""
    charged = (
        "FROM generations WHERE key_hash IS NOT NULL AND state <> 'pending' "
        "AND finished_at IS NOT NULL AND total_cost_micro > 0"
    )
    op.execute(
        "INSERT INTO reservations (generation_id, key_hash, amount_micro, state, settled_micro, "
        "created_at, expires_at, finished_at) SELECT id, key_hash, total_cost_micro, 'settled', "
        f"total_cost_micro, created_at, finished_at, finished_at {charged}"
    )
    for kind, amount, at in (
        ("reserve", "total_cost_micro", "created_at"),
        ("settle", "total_cost_micro", "finished_at"),
        ("release", "0", "finished_at"),
    ):
        op.execute(
            "INSERT INTO ledger_entries (key_hash, generation_id, kind, amount_micro, created_at) "
            f"SELECT key_hash, id, '{kind}', {amount}, {at} {charged} ORDER BY {at}, id"
        )
    used = (
        "(SELECT COALESCE(SUM(e.amount_micro), 0) FROM ledger_entries e "
        "WHERE e.key_hash = api_keys.hash AND e.kind = 'settle')"
    )
    op.execute(
        "INSERT INTO key_balances (key_hash, period_start, period_used_micro, reserved_micro, "
        f"total_used_micro, updated_at) SELECT hash, NULL, {used}, 0, {used}, CURRENT_TIMESTAMP "
        "FROM api_keys"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER ledger_entries_append_only ON ledger_entries")
        op.execute("DROP FUNCTION ledger_entries_append_only()")
    op.drop_table("rate_windows")
    op.drop_index("ix_ledger_entries_key_hash_kind_created_at", table_name="ledger_entries")
    op.drop_table("ledger_entries")  # SQLite drops its triggers with it
    op.drop_index("ix_reservations_key_hash", table_name="reservations")
    op.drop_index("ix_reservations_state_expires_at", table_name="reservations")
    op.drop_table("reservations")
    op.drop_table("key_balances")
