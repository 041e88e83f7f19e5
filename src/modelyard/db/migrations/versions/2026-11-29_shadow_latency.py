"""Latency buckets in shadow_rollups: p50/p95 of shadow versions, like the routes'

Revision ID: c7d3e9f5a1b8
Revises: f6c2b8d4e0a7
Create Date: 2026-11-29 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c7d3e9f5a1b8"
down_revision: str | None = "f6c2b8d4e0a7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As modelyard.predictions.rollups at this revision: 90 buckets, 4 per doubling from 0.01 ms.
BUCKETS = 90


def _bucket(index: int) -> str:
    return f"b{index:02d}"


def upgrade() -> None:
    # Rows written before know their time's sum only: their buckets are empty, their percentiles
    # unknown (as for a window without timed predictions).
    with op.batch_alter_table("shadow_rollups") as batch:
        batch.add_column(sa.Column("time_min_ms", sa.Float(), nullable=True))
        batch.add_column(sa.Column("time_max_ms", sa.Float(), nullable=True))
        for i in range(BUCKETS):
            batch.add_column(
                sa.Column(_bucket(i), sa.BigInteger(), nullable=False, server_default="0")
            )


def downgrade() -> None:
    with op.batch_alter_table("shadow_rollups") as batch:
        for i in reversed(range(BUCKETS)):
            batch.drop_column(_bucket(i))
        batch.drop_column("time_max_ms")
        batch.drop_column("time_min_ms")
