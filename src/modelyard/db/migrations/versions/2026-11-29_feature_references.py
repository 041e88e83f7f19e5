"""Drift: reference statistics of a version's input features

Revision ID: d4a0f6b2c8e5
Revises: e5b1a7c3d9f6
Create Date: 2026-11-29 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "d4a0f6b2c8e5"
down_revision: str | None = "e5b1a7c3d9f6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "feature_references",
        sa.Column("version_id", sa.Uuid(), nullable=False),
        sa.Column("model_id", sa.Uuid(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_path", sa.String(length=1024), nullable=True),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("features", JSON_TYPE, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_feature_references_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_models.id"],
            name=op.f("fk_feature_references_model_id_registered_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_feature_references_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_feature_references")),
    )
    op.create_index(
        op.f("ix_feature_references_model_id"), "feature_references", ["model_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_feature_references_model_id"), table_name="feature_references")
    op.drop_table("feature_references")
