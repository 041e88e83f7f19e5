"""Traffic policies (weighted routes, a shadow version) and shadow predictions

A `traffic_policies` row per model with a policy; the prediction log marks shadow predictions
and what they compared with their primary; `shadow_rollups` sums them for analytics.
On PostgreSQL the columns are added to the partitioned table (its partitions follow) with a
constant default: no row is rewritten.

Revision ID: e5b1a7c3d9f6
Revises: a1d7c3e9f5b2
Create Date: 2026-11-29 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "e5b1a7c3d9f6"
down_revision: str | None = "a1d7c3e9f5b2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
SHADOW_COLUMNS = ("shadow", "shadow_of", "agreed_rows", "abs_diff_sum")


def upgrade() -> None:
    op.create_table(
        "traffic_policies",
        sa.Column("model_id", sa.Uuid(), nullable=False),
        sa.Column("routes", JSON_TYPE, nullable=False),
        sa.Column("shadow", JSON_TYPE, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_models.id"],
            name=op.f("fk_traffic_policies_model_id_registered_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_traffic_policies")),
    )
    op.add_column(
        "predictions",
        sa.Column("shadow", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column("predictions", sa.Column("shadow_of", sa.Uuid(), nullable=True))
    op.add_column("predictions", sa.Column("agreed_rows", sa.Integer(), nullable=True))
    op.add_column("predictions", sa.Column("abs_diff_sum", sa.Float(), nullable=True))
    op.create_table(
        "shadow_rollups",
        sa.Column("period_s", sa.Integer(), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_id", sa.Uuid(), nullable=False),
        sa.Column("version_id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.BigInteger(), nullable=False),
        sa.Column("timed", sa.BigInteger(), nullable=False),
        sa.Column("time_sum_ms", sa.Float(), nullable=False),
        sa.Column("label_rows", sa.BigInteger(), nullable=False),
        sa.Column("agreed_rows", sa.BigInteger(), nullable=False),
        sa.Column("value_rows", sa.BigInteger(), nullable=False),
        sa.Column("abs_diff_sum", sa.Float(), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "period_s", "start_at", "model_id", "version_id", name=op.f("pk_shadow_rollups")
        ),
    )
    op.create_index(
        "ix_shadow_rollups_model_id_period_s_start_at",
        "shadow_rollups",
        ["model_id", "period_s", "start_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_shadow_rollups_model_id_period_s_start_at", table_name="shadow_rollups")
    op.drop_table("shadow_rollups")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+): a batch copy would rebuild the log.
    for column in reversed(SHADOW_COLUMNS):
        op.drop_column("predictions", column)
    op.drop_table("traffic_policies")
