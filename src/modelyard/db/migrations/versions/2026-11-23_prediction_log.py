"""Create the prediction log

Revision ID: 0974ae16da7b
Revises: 89a3c463f00d
Create Date: 2026-11-23 16:47:39.166381
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0974ae16da7b"
down_revision: str | None = "89a3c463f00d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON text on SQLite (as modelyard.db.types.JSONType at this revision).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("model_id", sa.Uuid(), nullable=True),
        sa.Column("version_id", sa.Uuid(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("api_key_id", sa.Uuid(), nullable=True),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "inputs",
            JSON,
            nullable=True,
        ),
        sa.Column(
            "outputs",
            JSON,
            nullable=True,
        ),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.Column("inference_time_ms", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index("ix_predictions_created_at", ["created_at"], unique=False)
        batch_op.create_index(
            "ix_predictions_model_id_created_at", ["model_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_predictions_owner_id_created_at", ["owner_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_predictions_user_id_created_at", ["user_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_predictions_user_id_created_at")
        batch_op.drop_index("ix_predictions_owner_id_created_at")
        batch_op.drop_index("ix_predictions_model_id_created_at")
        batch_op.drop_index("ix_predictions_created_at")

    op.drop_table("predictions")
