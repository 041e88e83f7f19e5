"""Upkeep of the prediction log: partitions made ahead, raw rows and rollups kept for their
retention periods. Run by `modelyard maintain` and by a periodic task in every server process;
one run at a time across replicas (a PostgreSQL advisory lock) and across the worker processes
of one data dir on SQLite (a file lock), the others skip their turn.

PostgreSQL: `predictions` has one partition a UTC day in the schema `prediction_partitions`
(`predictions_pYYYYMMDD`), the rows from before partitioning in `predictions_legacy`, and a
default partition catching what no partition covers (a clock far off). Expired raw rows go by
dropping whole partitions (no row-by-row delete, no bloat); a partition is dropped once its last
moment is older than the retention. SQLite deletes expired rows in bounded batches, each its own
short transaction, so the writer is never blocked for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Executable, Table, delete, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from modelyard.config import Settings
from modelyard.db.sql import rowcount
from modelyard.db.tables import Prediction, prediction_rollups, shadow_rollups
from modelyard.db.types import utcnow

log = logging.getLogger(__name__)

SCHEMA = "prediction_partitions"
DEFAULT_PARTITION = "predictions_default"
# pg_try_advisory_lock key: "modelyard maintain" as digits, so no other lock collides by chance.
ADVISORY_LOCK_KEY = 0x6D795F6D61696E74
LOCK_FILE = "maintain.lock"
# Rows per delete statement on SQLite: a batch takes milliseconds, the writer waits no longer.
DELETE_BATCH_ROWS = 5_000
FIRST_RUN_DELAY_SECONDS = 60
_UPPER_BOUND = re.compile(r"TO \('([^']+)'\)")


@dataclass
class MaintenanceReport:
    """What one run did."""

    ran: bool = True  # False: another process held the lock
    partitions_created: list[str] = field(default_factory=list)
    partitions_dropped: list[str] = field(default_factory=list)
    rows_deleted: int = 0
    rollups_deleted: int = 0


def _day(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


async def maintain(
    engine: AsyncEngine, settings: Settings, *, now: datetime | None = None
) -> MaintenanceReport:
    """Make the coming days' partitions and drop or delete what is past retention, once.

    Returns a report with `ran=False` if another process is running it.
    """
    now = now or utcnow()
    postgres = engine.dialect.name == "postgresql"
    async with _exclusive(engine, settings.data_dir, postgres=postgres) as held:
        if not held:
            return MaintenanceReport(ran=False)
        report = MaintenanceReport()
        raw_days = settings.prediction_log_retention_days
        raw_cutoff = _day(now) - timedelta(days=raw_days) if raw_days else None
        if postgres:
            async with engine.connect() as conn:
                report.partitions_created = await _create_partitions(
                    conn, _day(now), settings.prediction_log_partitions_ahead_days
                )
                if raw_cutoff is not None:
                    report.partitions_dropped = await _drop_partitions(conn, raw_cutoff)
        if raw_cutoff is not None:
            expired = _expired_raw_rows(raw_cutoff, postgres=postgres)
            report.rows_deleted = await _delete_batches(engine, expired)
        rollup_days = settings.prediction_rollup_retention_days
        if rollup_days:
            cutoff = _day(now) - timedelta(days=rollup_days)
            report.rollups_deleted = await _delete_batches(engine, _expired_rollups(cutoff))
            report.rollups_deleted += await _delete_batches(
                engine, _expired_rollups(cutoff, shadow_rollups)
            )
    log.info(
        "prediction_log_maintained",
        extra={
            "partitions_created": len(report.partitions_created),
            "partitions_dropped": len(report.partitions_dropped),
            "rows_deleted": report.rows_deleted,
            "rollups_deleted": report.rollups_deleted,
        },
    )
    return report


@contextlib.asynccontextmanager
async def _exclusive(engine: AsyncEngine, data_dir: Path, *, postgres: bool) -> AsyncIterator[bool]:
    """Hold the maintenance lock for the block; yield False (and hold nothing) if it is taken."""
    if postgres:
        # A session-level lock on a connection of its own, released even if the run fails.
        async with engine.connect() as conn:
            held = await conn.scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            )
            await conn.commit()
            try:
                yield bool(held)
            finally:
                if held:
                    await conn.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY}
                    )
                    await conn.commit()
        return
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - microseconds, local disk
    with (data_dir / LOCK_FILE).open("ab") as file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)


async def _partitions(conn: AsyncConnection) -> dict[str, str]:
    """Return each partition of `predictions` by name with its bound expression."""
    rows = await conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'public.predictions'::regclass"
        )
    )
    return {str(name): str(bound) for name, bound in rows}


async def _create_partitions(conn: AsyncConnection, today: datetime, ahead: int) -> list[str]:
    """Create the daily partitions from today to `ahead` days on that are missing."""
    existing = await _partitions(conn)
    uppers = [upper for bound in existing.values() if (upper := _upper(bound)) is not None]
    covered_until = max(uppers, default=None)
    created = []
    for offset in range(ahead + 1):
        start = today + timedelta(days=offset)
        name = f"predictions_p{start:%Y%m%d}"
        if name in existing or (covered_until is not None and start < covered_until):
            continue
        end = start + timedelta(days=1)
        # Rows the default partition caught for that day move into the new one, in the same
        # transaction: a partition cannot be attached while the default holds rows of its range.
        await conn.execute(
            text(
                f"CREATE TABLE {SCHEMA}.{name} "
                "(LIKE public.predictions INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
        )
        if DEFAULT_PARTITION in existing:
            await conn.execute(
                text(
                    f"WITH moved AS (DELETE FROM {SCHEMA}.{DEFAULT_PARTITION} "  # noqa: S608 - names made here
                    "WHERE created_at >= :start AND created_at < :end RETURNING *) "
                    f"INSERT INTO {SCHEMA}.{name} SELECT * FROM moved"
                ),
                {"start": start, "end": end},
            )
        await conn.execute(
            text(
                f"ALTER TABLE public.predictions ATTACH PARTITION {SCHEMA}.{name} "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
        )
        await conn.commit()
        created.append(name)
    return created


def _upper(bound: str) -> datetime | None:
    found = _UPPER_BOUND.search(bound)
    if found is None:
        return None  # the default partition
    return datetime.fromisoformat(found.group(1)).astimezone(UTC)


async def _drop_partitions(conn: AsyncConnection, cutoff: datetime) -> list[str]:
    """Drop the partitions whose every row is older than `cutoff`."""
    dropped = []
    for name, bound in sorted((await _partitions(conn)).items()):
        upper = _upper(bound)
        if upper is None or upper > cutoff:
            continue
        await conn.execute(text(f"DROP TABLE {SCHEMA}.{name}"))
        await conn.commit()
        dropped.append(name)
    return dropped


def _expired_raw_rows(cutoff: datetime, *, postgres: bool) -> Executable:
    """One batch of raw rows older than `cutoff`; on PostgreSQL only the default partition can
    hold rows older than the dated partitions dropped whole."""
    if postgres:
        return text(
            f"DELETE FROM {SCHEMA}.{DEFAULT_PARTITION} WHERE ctid IN "  # noqa: S608 - names made here
            f"(SELECT ctid FROM {SCHEMA}.{DEFAULT_PARTITION} WHERE created_at < :cutoff "
            f"LIMIT {DELETE_BATCH_ROWS})"
        ).bindparams(cutoff=cutoff)
    ids = select(Prediction.id).where(Prediction.created_at < cutoff).limit(DELETE_BATCH_ROWS)
    return delete(Prediction).where(Prediction.id.in_(ids))


def _expired_rollups(cutoff: datetime, table: Table = prediction_rollups) -> Executable:
    r = table.c
    key = (r.period_s, r.start_at, r.model_id, r.version_id)
    keys = select(*key).where(r.start_at < cutoff).limit(DELETE_BATCH_ROWS)
    return delete(table).where(tuple_(*key).in_(keys))


async def _delete_batches(engine: AsyncEngine, statement: Executable) -> int:
    """Run a delete of at most DELETE_BATCH_ROWS rows until it deletes fewer; one transaction
    a batch. Return the rows deleted."""
    total = 0
    while True:
        async with engine.begin() as conn:
            result = await conn.execute(statement)
        deleted = rowcount(result)
        total += deleted
        if deleted < DELETE_BATCH_ROWS:
            return total
        await asyncio.sleep(0)  # let requests in between batches


async def run_periodically(engine: AsyncEngine, settings: Settings) -> None:
    """Run `maintain` every `prediction_log_maintenance_interval_seconds`, until cancelled.

    The first run waits a minute (or the interval, if shorter): a starting server has its
    partitions (the migration and earlier runs make them days ahead) and better things to do.
    """
    interval = settings.prediction_log_maintenance_interval_seconds
    await asyncio.sleep(min(interval, FIRST_RUN_DELAY_SECONDS))
    while True:
        try:
            await maintain(engine, settings)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never end the loop: the next turn tries again; partitions are made a week ahead.
            log.exception("prediction_log_maintenance_failed")
        await asyncio.sleep(interval)
