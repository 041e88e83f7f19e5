"""Upkeep of the prediction log: partitions ahead, retention of raw rows and rollups, one runner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.config import Settings
from modelyard.db import migrate
from modelyard.db.engine import make_engine
from modelyard.db.tables import Prediction, prediction_rollups
from modelyard.db.types import utcnow
from modelyard.predictions.log import maintenance
from tests.predictions.test_log import make_log
from tests.support.predictions import make_record
from tests.support.settings import make_settings
from tests.test_migrations import fresh_url  # noqa: F401 - a fixture: a database of its own


@pytest.fixture
def own_url(fresh_url: str) -> str:  # noqa: F811 - the fixture
    """A database of the test's own at head: partitions change under it."""
    migrate.upgrade(fresh_url)
    return fresh_url


@pytest.fixture
async def own_engine(own_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(own_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def own_settings(tmp_path: Path, own_url: str) -> Settings:
    return make_settings(tmp_path, own_url)


def today() -> datetime:
    now = utcnow()
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


async def write(engine: AsyncEngine, tmp_path: Path, *times: datetime) -> list[str]:
    log = make_log(engine, tmp_path / "spool")
    await log.start()
    records = [make_record(created_at=at) for at in times]
    for rec in records:
        log.record(rec)
    await log.aclose()
    return [str(rec.id) for rec in records]


async def stored_ids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return {str(i) for i in await conn.scalars(select(Prediction.id))}


async def rollup_starts(engine: AsyncEngine) -> set[datetime]:
    async with engine.connect() as conn:
        return set(await conn.scalars(select(prediction_rollups.c.start_at)))


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_sqlite_deletes_raw_rows_past_retention_in_batches(
    own_engine: AsyncEngine,
    own_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(maintenance, "DELETE_BATCH_ROWS", 2)
    day = today()
    old = await write(own_engine, tmp_path, *(day - timedelta(days=31, hours=i) for i in range(5)))
    kept = await write(own_engine, tmp_path, day - timedelta(days=29), day)

    report = await maintenance.maintain(own_engine, own_settings)

    assert report.ran
    assert report.rows_deleted == len(old)
    assert await stored_ids(own_engine) == set(kept)


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_postgresql_makes_partitions_ahead_and_drops_expired_ones_whole(
    own_engine: AsyncEngine, own_settings: Settings, tmp_path: Path
) -> None:
    day = today()
    later = day + timedelta(days=40)  # maintenance as it runs 40 days from now
    [_legacy, _dated, in_default, future] = await write(
        own_engine,
        tmp_path,
        day - timedelta(days=5),  # the partition the migration made of the old table
        day + timedelta(days=3),  # a daily partition the migration made ahead
        day + timedelta(days=15),  # no partition yet: the default one
        later + timedelta(days=1, hours=2),  # the default one, until its day's partition exists
    )

    report = await maintenance.maintain(own_engine, own_settings, now=later)

    assert report.partitions_created == [
        f"predictions_p{later + timedelta(days=d):%Y%m%d}" for d in range(8)
    ]
    assert "predictions_legacy" in report.partitions_dropped
    assert f"predictions_p{day + timedelta(days=3):%Y%m%d}" in report.partitions_dropped
    assert await stored_ids(own_engine) == {in_default, future}  # not legacy, not dated
    async with own_engine.connect() as conn:
        where = await conn.scalar(
            text("SELECT tableoid::regclass::text FROM predictions WHERE id = :id"),
            {"id": future},
        )
    assert where == f"prediction_partitions.predictions_p{later + timedelta(days=1):%Y%m%d}"


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_rollups_are_kept_for_their_own_longer_retention(
    own_engine: AsyncEngine, own_settings: Settings, tmp_path: Path
) -> None:
    day = today()
    await write(own_engine, tmp_path, day - timedelta(days=401), day - timedelta(days=45), day)

    report = await maintenance.maintain(own_engine, own_settings)

    starts = await rollup_starts(own_engine)
    assert report.rollups_deleted == 3  # the minute, the hour and the day of the oldest
    assert min(starts) == day - timedelta(days=45)
    async with own_engine.connect() as conn:
        raw = await conn.scalar(select(func.count()).select_from(Prediction))
    # Raw rows of 45 days ago are past their 30 days; on PostgreSQL they sit in the partition
    # the migration made of the old table, dropped whole only once all of it has expired.
    assert raw == (1 if own_engine.dialect.name == "sqlite" else 3)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_a_second_maintainer_skips_its_turn_while_one_runs(
    own_engine: AsyncEngine, own_settings: Settings
) -> None:
    postgres = own_engine.dialect.name == "postgresql"
    async with maintenance._exclusive(own_engine, own_settings.data_dir, postgres=postgres) as held:
        report = await maintenance.maintain(own_engine, own_settings)

    assert held
    assert not report.ran
    assert (await maintenance.maintain(own_engine, own_settings)).ran
