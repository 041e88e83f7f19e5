"""Index batch_jobs by owner and start: the fair pick finds when an account was last served

Revision ID: 4e8a2c6f0b3d
Revises: a9e4c2f7b1d3
Create Date: 2026-12-07 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "4e8a2c6f0b3d"
down_revision: str | None = "a9e4c2f7b1d3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batch_jobs") as batch:
        batch.create_index("ix_batch_jobs_owner_id_started_at", ["owner_id", "started_at"])


def downgrade() -> None:
    with op.batch_alter_table("batch_jobs") as batch:
        batch.drop_index("ix_batch_jobs_owner_id_started_at")
