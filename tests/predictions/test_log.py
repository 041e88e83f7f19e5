"""The prediction log writer: batches, idempotent replay, the spool, outages and SIGTERM."""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.db import migrate
from modelyard.db.engine import make_engine, make_sessionmaker
from modelyard.db.tables import Prediction, prediction_rollups
from modelyard.db.types import utcnow
from modelyard.observability.metrics import Metrics
from modelyard.predictions.log import rollups
from modelyard.predictions.log.record import PredictionRecord
from modelyard.predictions.log.writer import PredictionLog
from tests.predictions import sigterm_writer
from tests.support.polling import wait_until
from tests.support.predictions import make_record, truncation
from tests.support.tcpproxy import TcpProxy

# Bounds of the polling loops below: they wait for a final state, never assert a duration.
WAIT_SECONDS = 60
SLOW_FLUSH_MS = 600_000  # nothing is written by the flush window during a test


def make_log(engine: AsyncEngine, spool_dir: Path, **overrides: Any) -> PredictionLog:
    values: dict[str, Any] = {
        "spool_dir": spool_dir,
        "batch_size": 50,
        "flush_ms": 20,
        "queue_size": 10_000,
        "keep_payloads": True,
        "max_payload_bytes": 64 * 1024,
        "metrics": Metrics(),
    }
    values.update(overrides)
    return PredictionLog(make_sessionmaker(engine), **values)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
async def prediction_log(engine: AsyncEngine, spool_dir: Path) -> AsyncIterator[PredictionLog]:
    log = make_log(engine, spool_dir)
    await log.start()
    yield log
    await log.aclose()


def sample(log_metrics: Metrics, name: str) -> float:
    value = log_metrics.registry.get_sample_value(name)
    return value or 0.0


async def stored(engine: AsyncEngine) -> dict[uuid.UUID, Prediction]:
    async with make_sessionmaker(engine)() as db:
        return {p.id: p for p in await db.scalars(select(Prediction))}


async def count_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(Prediction)) or 0)


async def rolled_up(engine: AsyncEngine) -> dict[int, tuple[int, int, int]]:
    """(requests, failures, rows) per period, summed over every rollup row."""
    r = prediction_rollups.c
    query = select(r.period_s, func.sum(r.requests), func.sum(r.failures), func.sum(r.rows))
    async with engine.connect() as conn:
        found = await conn.execute(query.group_by(r.period_s))
        return {period: (int(a), int(b), int(c)) for period, a, b, c in found}


def expected_rollup(records: list[PredictionRecord]) -> dict[int, tuple[int, int, int]]:
    totals = (
        len(records),
        sum(rec.status == "error" for rec in records),
        sum(rec.n_rows for rec in records),
    )
    return dict.fromkeys(rollups.PERIODS, totals)


async def wait_for_rows(engine: AsyncEngine, expected: int) -> int:
    """Poll until the table holds `expected` rows (failing past the bound); return the count."""
    count = 0

    async def reached() -> bool:
        nonlocal count
        count = await count_rows(engine)
        return count == expected

    await wait_until(reached, lambda: f"{expected} rows in the log; there are {count}")
    return count


async def wait_for_empty_spool(spool_dir: Path) -> list[Path]:
    """Poll until the spool holds no file (failing past the bound); return what is left."""
    await wait_until(
        lambda: not spool_files(spool_dir), lambda: f"spool empty: {spool_files(spool_dir)}"
    )
    return spool_files(spool_dir)


def spool_files(spool_dir: Path) -> list[Path]:
    if not spool_dir.is_dir():
        return []
    return sorted(p for p in spool_dir.iterdir() if p.suffix in (".jsonl", ".replaying"))


async def test_flush_writes_every_record_with_its_fields(
    prediction_log: PredictionLog, engine: AsyncEngine
) -> None:
    records = [make_record(n_rows=i, inference_time_ms=i / 10) for i in range(120)]
    records.append(make_record(status="error", error="2 features expected", outputs=None))
    records.append(make_record(protocol="v2", api_key_id=uuid.uuid4(), inference_time_ms=None))

    for rec in records:
        prediction_log.record(rec)
    await prediction_log.flush()

    rows = await stored(engine)
    assert len(rows) == len(records)
    for rec in records:
        row = rows[rec.id]
        assert {name: getattr(row, name) for name in PredictionRecord.__dataclass_fields__} == {
            name: getattr(rec, name) for name in PredictionRecord.__dataclass_fields__
        }
    assert prediction_log.pending == 0


async def test_recording_the_same_ids_again_keeps_one_row_each(
    prediction_log: PredictionLog, engine: AsyncEngine
) -> None:
    records = [make_record() for _ in range(30)]
    for rec in records:
        prediction_log.record(rec)
    await prediction_log.flush()

    for rec in records:
        prediction_log.record(rec)
    await prediction_log.flush()

    assert await count_rows(engine) == 30
    assert await rolled_up(engine) == expected_rollup(records)


async def test_rollups_add_up_what_the_batches_inserted(
    prediction_log: PredictionLog, engine: AsyncEngine
) -> None:
    start = utcnow() - timedelta(hours=2)
    records = [
        make_record(
            created_at=start + timedelta(seconds=37 * i),
            status="error" if i % 7 == 0 else "success",
            n_rows=1 + i % 3,
        )
        for i in range(300)
    ]
    for rec in records:
        prediction_log.record(rec)
    await prediction_log.flush()

    assert await rolled_up(engine) == expected_rollup(records)


async def test_without_payloads_no_inputs_or_outputs_are_stored(
    engine: AsyncEngine, spool_dir: Path
) -> None:
    log = make_log(engine, spool_dir, keep_payloads=False)
    await log.start()
    rec = make_record(inputs=[[1.0, 2.0]], outputs=[1])

    log.record(rec)
    await log.flush()
    await log.aclose()

    row = (await stored(engine))[rec.id]
    assert (row.inputs, row.outputs) == (None, None)
    assert (row.status, row.n_rows) == ("success", rec.n_rows)
    assert (rec.inputs, rec.outputs) == ([[1.0, 2.0]], [1])  # the caller's record is untouched


async def test_nan_in_payloads_is_stored_as_null(
    prediction_log: PredictionLog, engine: AsyncEngine
) -> None:
    rec = make_record(status="error", error="NaN not allowed", inputs=[[math.nan, 1.0]])

    prediction_log.record(rec)
    await prediction_log.flush()

    assert (await stored(engine))[rec.id].inputs == [[None, 1.0]]


BUDGET = 1024


@pytest.mark.parametrize(
    "value",
    [
        pytest.param([[1.5, 2.25, 3.0, 4.125]] * 500, id="numbers"),
        pytest.param([['"\\'] * 2000], id="escaped-twice-in-the-preview"),
        pytest.param([["\u00e9\u4e2d\U0001f600"] * 500], id="multi-byte"),
    ],
)
async def test_payloads_past_the_budget_are_stored_as_a_truncation_marker(
    engine: AsyncEngine, spool_dir: Path, value: Any
) -> None:
    log = make_log(engine, spool_dir, max_payload_bytes=BUDGET)
    await log.start()
    full = orjson.dumps(value)
    rec = make_record(status="error", error="bad", inputs=value, outputs={"predictions": value})

    log.record(rec)
    await log.aclose()

    row = (await stored(engine))[rec.id]
    inputs = truncation(row.inputs, budget=BUDGET)
    outputs = truncation(row.outputs, budget=BUDGET)
    assert inputs["bytes"] == len(full)
    assert full.decode().startswith(inputs["preview"])
    assert min(len(inputs["preview"]), len(outputs["preview"])) > BUDGET // 3


async def test_payloads_within_the_budget_are_stored_whole(
    engine: AsyncEngine, spool_dir: Path
) -> None:
    log = make_log(engine, spool_dir, max_payload_bytes=BUDGET)
    await log.start()
    value = ["x" * (BUDGET - 4)]  # ["x..."]: exactly the budget
    assert len(orjson.dumps(value)) == BUDGET
    rec = make_record(inputs=value, outputs=[1])

    log.record(rec)
    await log.aclose()

    assert (await stored(engine))[rec.id].inputs == value


async def test_an_error_past_the_budget_is_cut_and_says_its_size(
    engine: AsyncEngine, spool_dir: Path
) -> None:
    log = make_log(engine, spool_dir, max_payload_bytes=BUDGET)
    await log.start()
    error = "unknown " + "\u00e9" * 10_000
    rec = make_record(status="error", error=error, inputs=None, outputs=None)

    log.record(rec)
    await log.aclose()

    stored_error = (await stored(engine))[rec.id].error
    assert stored_error is not None
    assert len(stored_error.encode()) <= BUDGET
    assert stored_error.startswith("unknown \u00e9\u00e9")
    assert stored_error.endswith(f"... (truncated from {len(error.encode())} bytes)")


async def test_a_row_the_database_refuses_is_kept_without_its_payload(
    prediction_log: PredictionLog, engine: AsyncEngine, dialect: str
) -> None:
    # PostgreSQL cannot store NUL in JSONB: that one row must not sink its batch.
    refused = make_record(inputs=[["a\x00b"]], error=None)
    others = [make_record() for _ in range(5)]

    for rec in [*others[:2], refused, *others[2:]]:
        prediction_log.record(rec)
    await prediction_log.flush()

    rows = await stored(engine)
    assert set(rows) == {refused.id, *(rec.id for rec in others)}
    expected = None if dialect == "postgresql" else [["a\x00b"]]
    assert rows[refused.id].inputs == expected


async def test_aclose_writes_what_is_queued(engine: AsyncEngine, spool_dir: Path) -> None:
    log = make_log(engine, spool_dir, batch_size=1000, flush_ms=SLOW_FLUSH_MS)
    await log.start()
    records = [make_record() for _ in range(300)]
    for rec in records:
        log.record(rec)

    await log.aclose()

    assert set(await stored(engine)) == {rec.id for rec in records}
    assert spool_files(spool_dir) == []
    assert log.pending == 0


async def test_a_full_queue_spools_to_disk_and_the_writer_replays_it(
    engine: AsyncEngine, spool_dir: Path
) -> None:
    metrics = Metrics()
    log = make_log(engine, spool_dir, queue_size=5, flush_ms=SLOW_FLUSH_MS, metrics=metrics)
    records = [make_record() for _ in range(20)]

    for rec in records:  # the writer is not started yet: the queue cannot drain
        log.record(rec)

    assert log.pending == 5
    assert sample(metrics, "modelyard_prediction_log_rows_spooled_total") == 15
    assert len(spool_files(spool_dir)) == 1
    await log.start()
    await log.flush()
    count = await wait_for_rows(engine, 20)
    left = await wait_for_empty_spool(spool_dir)
    await log.aclose()
    assert count == 20
    assert set(await stored(engine)) == {rec.id for rec in records}
    assert left == []
    assert sample(metrics, "modelyard_prediction_log_rows_replayed_total") == 15
    assert sample(metrics, "modelyard_prediction_log_rows_written_total") == 5
    assert sample(metrics, "modelyard_prediction_log_rows_dropped_total") == 0


async def test_the_queue_depth_gauge_follows_batches_not_each_record(
    engine: AsyncEngine, spool_dir: Path
) -> None:
    metrics = Metrics()
    log = make_log(engine, spool_dir, batch_size=10, flush_ms=SLOW_FLUSH_MS, metrics=metrics)
    depth = "modelyard_prediction_log_queue_depth"

    for _ in range(25):  # the writer is not started yet: as if it were stuck on the database
        log.record(make_record())
    published = sample(metrics, depth)
    await log.start()
    await log.flush()
    flushed = sample(metrics, depth)
    await log.aclose()

    # Published every batch_size records while queued, and when a batch is done.
    assert published == 20
    assert flushed == 0


async def test_replaying_rows_already_written_adds_no_duplicates(
    prediction_log: PredictionLog, engine: AsyncEngine, spool_dir: Path
) -> None:
    records = [make_record() for _ in range(20)]
    for rec in records:
        prediction_log.record(rec)
    await prediction_log.flush()
    metrics = Metrics()
    again = make_log(engine, spool_dir, queue_size=1, flush_ms=SLOW_FLUSH_MS, metrics=metrics)
    for rec in records:
        again.record(rec)  # 1 queued, 19 spooled

    await again.start()
    left = await wait_for_empty_spool(spool_dir)
    await again.aclose()

    assert left == []
    assert sample(metrics, "modelyard_prediction_log_rows_replayed_total") == 19
    assert await count_rows(engine) == 20
    assert await rolled_up(engine) == expected_rollup(records)


async def test_start_replays_a_file_left_mid_replay_by_a_crash(
    engine: AsyncEngine, spool_dir: Path
) -> None:
    crashed = make_log(engine, spool_dir, queue_size=1, flush_ms=SLOW_FLUSH_MS)
    records = [make_record() for _ in range(11)]
    for rec in records:
        crashed.record(rec)  # 1 queued (lost with the "crash"), 10 spooled
    crashed._close_spool_file()  # what the process exit does to its file
    [path] = spool_files(spool_dir)
    path.rename(path.with_suffix(".replaying"))
    log = make_log(engine, spool_dir)

    await log.start()
    left = await wait_for_empty_spool(spool_dir)
    await log.aclose()

    assert left == []
    assert set(await stored(engine)) == {rec.id for rec in records[1:]}


async def test_record_after_aclose_is_spooled_not_lost(
    engine: AsyncEngine, spool_dir: Path
) -> None:
    log = make_log(engine, spool_dir)
    await log.start()
    await log.aclose()
    rec = make_record()

    log.record(rec)

    [path] = spool_files(spool_dir)
    assert str(rec.id) in path.read_text()
    restarted = make_log(engine, spool_dir)
    await restarted.start()
    left = await wait_for_empty_spool(spool_dir)
    await restarted.aclose()
    assert left == []
    assert set(await stored(engine)) == {rec.id}


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_postgresql_outage_spools_and_replays_every_row_once(
    engine: AsyncEngine, proxied_postgresql_url: str, pg_proxy: TcpProxy, spool_dir: Path
) -> None:
    proxied = make_engine(proxied_postgresql_url)
    metrics = Metrics()
    log = PredictionLog(
        make_sessionmaker(proxied),
        spool_dir=spool_dir,
        batch_size=10,
        flush_ms=20,
        queue_size=10_000,
        keep_payloads=True,
        max_payload_bytes=64 * 1024,
        metrics=metrics,
    )
    await log.start()
    before = [make_record() for _ in range(25)]
    during = [make_record() for _ in range(40)]
    after = [make_record() for _ in range(15)]
    try:
        for rec in before:
            log.record(rec)
        await log.flush()
        assert await count_rows(engine) == 25

        await pg_proxy.cut()
        for rec in during:
            log.record(rec)
            await asyncio.sleep(0)  # traffic over time, not one burst
        await log.flush()
        spooled = sample(metrics, "modelyard_prediction_log_rows_spooled_total")
        rows_while_cut = await count_rows(engine)

        await pg_proxy.restore()
        for rec in after:
            log.record(rec)
        count = await wait_for_rows(engine, 80)
        left = await wait_for_empty_spool(spool_dir)
    finally:
        await log.aclose()
        await proxied.dispose()

    assert rows_while_cut == 25
    assert spooled == 40
    assert count == 80
    assert left == []
    assert set(await stored(engine)) == {rec.id for rec in [*before, *during, *after]}
    assert await rolled_up(engine) == expected_rollup([*before, *during, *after])
    # Rows recorded while the writer still backs off after the restore are spooled too.
    replayed = sample(metrics, "modelyard_prediction_log_rows_replayed_total")
    assert replayed == sample(metrics, "modelyard_prediction_log_rows_spooled_total") >= 40
    assert sample(metrics, "modelyard_prediction_log_rows_dropped_total") == 0


def test_sigterm_writes_every_recorded_prediction(tmp_path: Path) -> None:
    database = tmp_path / "log.db"
    url = f"sqlite+aiosqlite:///{database}"
    migrate.upgrade(url)
    n = 300
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
        [sys.executable, "-m", sigterm_writer.__name__, url, str(tmp_path / "spool"), str(n)],
        cwd=Path(__file__).parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert ready.strip() == b"ready", process.stderr.read() if process.stderr else ""
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, stderr.decode()
    assert sigterm_writer.count_rows(database) == n
