"""Partition predictions by UTC day on PostgreSQL; index failures and foreign calls

PostgreSQL: the existing table becomes one partition (`prediction_partitions.predictions_legacy`,
everything before the end of the last day it holds) of a new table partitioned by range of
`created_at`, so no row is copied; a default partition and a week of daily partitions follow.
The partitions live in their own schema so that the public one holds the tables the ORM
describes. SQLite keeps one table and only gains the indexes of failures.

Revision ID: 9e4f1a2b3c5d
Revises: 7c2d4e6f8a01
Create Date: 2026-11-29 08:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "9e4f1a2b3c5d"
down_revision: str | None = "7c2d4e6f8a01"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "prediction_partitions"
DAYS_AHEAD = 7
ERROR_INDEXES = ("model_id", "user_id", "owner_id")
FOREIGN_CALLS_INDEX = "ix_predictions_user_id_created_at_foreign"
INDEXES = {
    "ix_predictions_created_at": ["created_at"],
    "ix_predictions_model_id_created_at": ["model_id", "created_at"],
    "ix_predictions_owner_id_created_at": ["owner_id", "created_at"],
    "ix_predictions_user_id_created_at": ["user_id", "created_at"],
}
# JSONB on PostgreSQL (as modelyard.db.types.JSONType at this revision).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _columns() -> list[sa.Column[object]]:
    return [
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
        sa.Column("inputs", JSON, nullable=True),
        sa.Column("outputs", JSON, nullable=True),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.Column("inference_time_ms", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    ]


def _error_indexes(create: bool) -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        for column in ERROR_INDEXES:
            name = f"ix_predictions_{column}_created_at_errors"
            if create:
                batch_op.create_index(
                    name,
                    [column, "created_at"],
                    unique=False,
                    postgresql_where=sa.text("status = 'error'"),
                    sqlite_where=sa.text("status = 'error'"),
                )
            else:
                batch_op.drop_index(name)
        if create:
            batch_op.create_index(
                FOREIGN_CALLS_INDEX,
                ["user_id", "created_at"],
                unique=False,
                postgresql_where=sa.text("owner_id IS DISTINCT FROM user_id"),
                sqlite_where=sa.text("owner_id IS NOT user_id"),
            )
        else:
            batch_op.drop_index(FOREIGN_CALLS_INDEX)


def _day(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        _error_indexes(create=True)
        return
    last = conn.execute(sa.text("SELECT max(created_at) FROM predictions")).scalar()
    tomorrow = _day(datetime.now(UTC)) + timedelta(days=1)
    legacy_end = max(tomorrow, _day(last) + timedelta(days=1)) if last else tomorrow
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    # The old table, its rows and indexes become the first partition: renamed, moved, keyed
    # by (id, created_at) as a partition must be.
    op.execute("ALTER TABLE predictions RENAME TO predictions_legacy")
    op.execute(f"ALTER TABLE predictions_legacy SET SCHEMA {SCHEMA}")
    op.execute(f"ALTER TABLE {SCHEMA}.predictions_legacy DROP CONSTRAINT pk_predictions")
    op.execute(
        f"ALTER TABLE {SCHEMA}.predictions_legacy "
        "ADD CONSTRAINT predictions_legacy_pkey PRIMARY KEY (id, created_at)"
    )
    op.create_table(
        "predictions",
        *_columns(),
        sa.PrimaryKeyConstraint("id", "created_at", name=op.f("pk_predictions")),
        postgresql_partition_by="RANGE (created_at)",
    )
    for name, columns in INDEXES.items():
        op.create_index(name, "predictions", columns, unique=False)
    _error_indexes(create=True)
    # Attaching matches the equivalent indexes the old table has and builds the missing ones.
    op.execute(
        f"ALTER TABLE predictions ATTACH PARTITION {SCHEMA}.predictions_legacy "
        f"FOR VALUES FROM (MINVALUE) TO ('{legacy_end.isoformat()}')"
    )
    op.execute(f"CREATE TABLE {SCHEMA}.predictions_default PARTITION OF predictions DEFAULT")
    for offset in range(DAYS_AHEAD + 1):
        start = legacy_end + timedelta(days=offset)
        end = start + timedelta(days=1)
        op.execute(
            f"CREATE TABLE {SCHEMA}.predictions_p{start:%Y%m%d} PARTITION OF predictions "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        _error_indexes(create=False)
        return
    # Back to one plain table: the rows are copied out of the partitions.
    op.create_table(
        "predictions_flat",
        *_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_predictions_flat"),
    )
    op.execute("INSERT INTO predictions_flat SELECT * FROM predictions")
    op.drop_table("predictions")  # its partitions and indexes with it
    op.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    op.rename_table("predictions_flat", "predictions")
    op.execute("ALTER TABLE predictions RENAME CONSTRAINT pk_predictions_flat TO pk_predictions")
    for name, columns in INDEXES.items():
        op.create_index(name, "predictions", columns, unique=False)
