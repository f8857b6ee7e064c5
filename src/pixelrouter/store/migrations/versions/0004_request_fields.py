"""The current API's request fields on a generation: `session_id`, `trace`, `metadata`; the
adjustments made to reach its size (a tier clamped or mapped); and the images made but never
handed to the client (the operator's cost, not charged).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("session_id", sa.String(256), nullable=True))
        batch.add_column(sa.Column("trace", _json(), nullable=True))
        batch.add_column(sa.Column("request_metadata", _json(), nullable=True))
        batch.add_column(
            sa.Column("adjustments", _json(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch.add_column(
            sa.Column("undelivered_images", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("undelivered_images")
        batch.drop_column("adjustments")
        batch.drop_column("request_metadata")
        batch.drop_column("trace")
        batch.drop_column("session_id")
