"""Provider outcomes: one row per provider attempt (latency and throughput samples), and the
same outcomes summed per provider, model and minute (uptime windows and hourly buckets).

Revision ID: 0003
Revises: 0002
Create Date: 2026-01-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provider_outcomes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("provider_slug", sa.String(200), nullable=False),
        sa.Column("provider_name", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("provider_caused", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("image_tokens", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_provider_outcomes"),
    )
    op.create_index(
        "ix_provider_outcomes_provider_slug_created_at",
        "provider_outcomes",
        ["provider_slug", "created_at"],
    )
    op.create_index("ix_provider_outcomes_created_at", "provider_outcomes", ["created_at"])
    op.create_table(
        "provider_outcome_minutes",
        sa.Column("provider_slug", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("excluded", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "provider_slug", "model", "minute", name="pk_provider_outcome_minutes"
        ),
    )


def downgrade() -> None:
    op.drop_table("provider_outcome_minutes")
    op.drop_index("ix_provider_outcomes_created_at", table_name="provider_outcomes")
    op.drop_index("ix_provider_outcomes_provider_slug_created_at", table_name="provider_outcomes")
    op.drop_table("provider_outcomes")
