"""Files area usage: one row per stored file (or upload under way), for the storage quota

Revision ID: a9e4c2f7b1d3
Revises: c7d3e9f5a1b8
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a9e4c2f7b1d3"
down_revision: str | None = "c7d3e9f5a1b8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Files stored before have no row: an account's area is counted from the store the first
    # time its usage is needed (modelyard.files.quota).
    op.create_table(
        "stored_files",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_stored_files_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stored_files")),
        sa.UniqueConstraint("owner_id", "path", name=op.f("uq_stored_files_owner_id_path")),
    )


def downgrade() -> None:
    op.drop_table("stored_files")
