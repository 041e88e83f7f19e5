"""Add prediction_rollups (per model version, per minute and hour) and fill them from the log

Revision ID: 7c2d4e6f8a01
Revises: 7c4d2e9b1f05
Create Date: 2026-11-29 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7c2d4e6f8a01"
down_revision: str | None = "7c4d2e9b1f05"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As modelyard.predictions.rollups at this revision: 90 buckets, 4 per doubling from 0.01 ms.
BUCKETS = 90
NO_VERSION = "00000000-0000-0000-0000-000000000000"


def _bucket(index: int) -> str:
    return f"b{index:02d}"


def upgrade() -> None:
    op.create_table(
        "prediction_rollups",
        sa.Column("period_s", sa.Integer(), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_id", sa.Uuid(), nullable=False),
        sa.Column("version_id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("timed", sa.BigInteger(), nullable=False),
        sa.Column("time_sum_ms", sa.Float(), nullable=False),
        sa.Column("time_min_ms", sa.Float(), nullable=True),
        sa.Column("time_max_ms", sa.Float(), nullable=True),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(_bucket(i), sa.BigInteger(), nullable=False) for i in range(BUCKETS)),
        sa.PrimaryKeyConstraint(
            "period_s", "start_at", "model_id", "version_id", name=op.f("pk_prediction_rollups")
        ),
    )
    with op.batch_alter_table("prediction_rollups", schema=None) as batch_op:
        batch_op.create_index(
            "ix_prediction_rollups_owner_id_period_s_start_at",
            ["owner_id", "period_s", "start_at"],
            unique=False,
        )
    _fill_from_log()


def _fill_from_log() -> None:
    """Roll up the predictions logged before this revision, in SQL (one pass per period)."""
    conn = op.get_bind()
    postgres = conn.dialect.name == "postgresql"
    timed = "status = 'success' AND inference_time_ms IS NOT NULL"
    if postgres:
        bucket = (
            f"CASE WHEN inference_time_ms >= 0.01 THEN LEAST({BUCKETS - 1}, "
            "FLOOR(4 * LOG(2, (inference_time_ms / 0.01)::numeric))::int + 1) ELSE 0 END"
        )
        version = f"COALESCE(version_id, '{NO_VERSION}'::uuid)"
        owner = "(array_agg(owner_id))[1]"  # PostgreSQL has no max(uuid)
    else:
        # SQLite may lack log2(): count the doublings by comparison instead, the same edges.
        edges = " + ".join(
            f"(inference_time_ms >= {0.01 * 2 ** (k / 4)!r})" for k in range(BUCKETS - 1)
        )
        bucket = f"CASE WHEN inference_time_ms IS NULL THEN 0 ELSE {edges} END"
        version = f"COALESCE(version_id, '{NO_VERSION.replace('-', '')}')"
        owner = "MAX(owner_id)"
    counts = ", ".join(
        f"SUM(CASE WHEN {timed} AND bucket = {i} THEN 1 ELSE 0 END)" for i in range(BUCKETS)
    )
    columns = ", ".join(_bucket(i) for i in range(BUCKETS))
    for period in (60, 3600):
        if postgres:
            start = f"to_timestamp(floor(extract(epoch FROM created_at) / {period}) * {period})"
        else:
            start = (
                "strftime('%Y-%m-%d %H:%M:%S.000000', "
                f"(CAST(strftime('%s', created_at) AS INTEGER) / {period}) * {period}, "
                "'unixepoch')"
            )
        op.execute(
            f"""
            INSERT INTO prediction_rollups (period_s, start_at, model_id, version_id, owner_id,
                version, requests, failures, rows, timed, time_sum_ms, time_min_ms, time_max_ms,
                last_at, {columns})
            SELECT {period}, start, model_id, vid, {owner}, MAX(version), COUNT(*),
                SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END), SUM(n_rows),
                SUM(CASE WHEN {timed} THEN 1 ELSE 0 END),
                COALESCE(SUM(CASE WHEN {timed} THEN inference_time_ms END), 0),
                MIN(CASE WHEN {timed} THEN inference_time_ms END),
                MAX(CASE WHEN {timed} THEN inference_time_ms END),
                MAX(created_at), {counts}
            FROM (
                SELECT *, {start} AS start, {version} AS vid, {bucket} AS bucket
                FROM predictions WHERE model_id IS NOT NULL
            ) AS logged
            GROUP BY start, model_id, vid
            """  # noqa: S608 - constants of this file only
        )


def downgrade() -> None:
    with op.batch_alter_table("prediction_rollups", schema=None) as batch_op:
        batch_op.drop_index("ix_prediction_rollups_owner_id_period_s_start_at")
    op.drop_table("prediction_rollups")
