"""Initial schema: API keys and generation records.

Revision ID: 0001
Revises:
Create Date: 2026-01-14
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(JSONB(), "postgresql")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("limit_micro", sa.BigInteger(), nullable=True),
        sa.Column("limit_reset", sa.String(16), nullable=True),
        sa.Column("expires_at", _timestamp(), nullable=True),
        sa.Column("rate_limit_requests", sa.Integer(), nullable=True),
        sa.Column("rate_limit_interval_s", sa.Integer(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("hash", name="pk_api_keys"),
        sa.CheckConstraint("kind IN ('inference', 'management')", name="ck_api_keys_kind"),
        sa.CheckConstraint(
            "limit_reset IS NULL OR limit_reset IN ('daily', 'weekly', 'monthly')",
            name="ck_api_keys_limit_reset",
        ),
        sa.CheckConstraint(
            "limit_micro IS NULL OR limit_micro >= 0", name="ck_api_keys_limit_micro"
        ),
    )
    op.create_table(
        "generations",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=True),
        sa.Column("api", sa.String(16), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider_name", sa.String(200), nullable=True),
        sa.Column("provider_slug", sa.String(200), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("total_cost_micro", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("finished_at", _timestamp(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("generation_time_ms", sa.Integer(), nullable=True),
        sa.Column("streamed", sa.Boolean(), nullable=False),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("tokens_prompt", sa.Integer(), nullable=True),
        sa.Column("tokens_completion", sa.Integer(), nullable=True),
        sa.Column("num_images", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("http_referer", sa.Text(), nullable=True),
        sa.Column("app_title", sa.Text(), nullable=True),
        sa.Column("app_categories", _json(), nullable=False),
        sa.Column("end_user", sa.Text(), nullable=True),
        sa.Column("provider_responses", _json(), nullable=False),
        sa.Column("ignored_parameters", _json(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_status", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_generations"),
        sa.CheckConstraint(
            "state IN ('pending', 'succeeded', 'failed', 'cancelled')",
            name="ck_generations_state",
        ),
        sa.CheckConstraint("api IN ('chat', 'images', 'openai_images')", name="ck_generations_api"),
        sa.CheckConstraint("total_cost_micro >= 0", name="ck_generations_total_cost_micro"),
    )
    op.create_index("ix_generations_key_hash_created_at", "generations", ["key_hash", "created_at"])
    op.create_index("ix_generations_created_at", "generations", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_generations_created_at", table_name="generations")
    op.drop_index("ix_generations_key_hash_created_at", table_name="generations")
    op.drop_table("generations")
    op.drop_table("api_keys")
