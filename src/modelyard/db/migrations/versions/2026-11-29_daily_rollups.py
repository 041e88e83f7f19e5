"""Daily prediction rollups (filled from the hourly ones) and an index for one model's analytics

A 30-day window read ~720 hourly rows per version; it now reads 30 daily ones and the hours and
minutes at its edges.

Revision ID: 3a6c8e0b2d47
Revises: 9e4f1a2b3c5d
Create Date: 2026-11-29 10:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "3a6c8e0b2d47"
down_revision: str | None = "9e4f1a2b3c5d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As modelyard.predictions.rollups at this revision.
BUCKETS = 90
HOUR = 3600
DAY = 86400
INDEX = "ix_prediction_rollups_model_id_period_s_start_at"


def upgrade() -> None:
    with op.batch_alter_table("prediction_rollups", schema=None) as batch_op:
        batch_op.create_index(INDEX, ["model_id", "period_s", "start_at"], unique=False)
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        day = f"to_timestamp(floor(extract(epoch FROM start_at) / {DAY}) * {DAY})"
        owner = "(array_agg(owner_id))[1]"  # PostgreSQL has no max(uuid)
    else:
        day = (
            "strftime('%Y-%m-%d %H:%M:%S.000000', "
            f"(CAST(strftime('%s', start_at) AS INTEGER) / {DAY}) * {DAY}, 'unixepoch')"
        )
        owner = "MAX(owner_id)"
    summed = ["requests", "failures", "rows", "timed", "time_sum_ms"]
    summed += [f"b{i:02d}" for i in range(BUCKETS)]
    names = ", ".join(summed)
    sums = ", ".join(f"SUM({name})" for name in summed)
    op.execute(
        f"""
        INSERT INTO prediction_rollups (period_s, start_at, model_id, version_id, owner_id,
            version, time_min_ms, time_max_ms, last_at, {names})
        SELECT {DAY}, day, model_id, version_id, {owner}, MAX(version), MIN(time_min_ms),
            MAX(time_max_ms), MAX(last_at), {sums}
        FROM (SELECT *, {day} AS day FROM prediction_rollups WHERE period_s = {HOUR}) AS hours
        GROUP BY day, model_id, version_id
        """  # noqa: S608 - constants of this file only
    )


def downgrade() -> None:
    op.execute("DELETE FROM prediction_rollups WHERE period_s = 86400")
    with op.batch_alter_table("prediction_rollups", schema=None) as batch_op:
        batch_op.drop_index(INDEX)
