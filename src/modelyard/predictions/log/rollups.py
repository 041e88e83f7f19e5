"""Rollups of the prediction log: per model version, per minute, hour and day, the requests,
failures, rows, summed and extreme inference times, and a latency distribution in fixed buckets.

The log writer adds the rows it actually inserted (`INSERT ... ON CONFLICT DO NOTHING RETURNING
id`) in the same transaction as the insert, so a replayed spool never counts a row twice and a
rollup never disagrees with the rows committed beside it. Analytics read the rollups: their cost
follows the length of the window (whole days, then hours and minutes at its edges), not the
number of logged rows.

Latency buckets: bucket 0 holds times below 0.01 ms; bucket k (1..88) holds
[0.01 * 2**((k-1)/4), 0.01 * 2**(k/4)) ms; bucket 89 holds 0.01 * 2**22 ms (about 41.9 s) and
more. A percentile is the nearest-rank bucket's geometric middle, clamped to the window's
smallest and largest time; so for times between 0.01 ms and 41.9 s it is within a factor of
2**(1/8) of the exact nearest-rank value: at most 9.1 % off (below 0.01 ms: at most 0.01 ms off;
above 41.9 s: the window's largest time). Only successful predictions with a time count.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.db.tables import (
    ROLLUP_BUCKETS,
    prediction_rollups,
    rollup_bucket_column,
    shadow_rollups,
)
from modelyard.predictions.log.record import PredictionStatus

MINUTE = 60
HOUR = 3600
DAY = 86400
PERIODS = (MINUTE, HOUR, DAY)
# Stands for "no version" in a rollup's key (a failure before the version was resolved).
NO_VERSION = uuid.UUID(int=0)
LOWEST_EDGE_MS = 0.01
BUCKETS_PER_DOUBLING = 4
BUCKET_COLUMNS = tuple(rollup_bucket_column(i) for i in range(ROLLUP_BUCKETS))
# The largest relative error of a percentile between the finite edges (2**(1/8) - 1).
PERCENTILE_RELATIVE_ERROR = 2 ** (1 / (2 * BUCKETS_PER_DOUBLING)) - 1
_SUMMED = ("requests", "failures", "rows", "timed", "time_sum_ms", *BUCKET_COLUMNS)
_SHADOW_SUMMED = (
    "requests",
    "failures",
    "timed",
    "time_sum_ms",
    *BUCKET_COLUMNS,
    "label_rows",
    "agreed_rows",
    "value_rows",
    "abs_diff_sum",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Row = dict[str, Any]


def bucket_of(ms: float) -> int:
    """Return the latency bucket of an inference time in milliseconds."""
    if not ms >= LOWEST_EDGE_MS:  # also NaN
        return 0
    index = math.floor(BUCKETS_PER_DOUBLING * math.log2(ms / LOWEST_EDGE_MS)) + 1
    return min(index, ROLLUP_BUCKETS - 1)


def bucket_middle(index: int) -> float:
    """Return the time a bucket stands for: the geometric middle of its edges."""
    if index <= 0:
        return LOWEST_EDGE_MS / 2
    return LOWEST_EDGE_MS * 2 ** ((index - 0.5) / BUCKETS_PER_DOUBLING)


def percentile(
    counts: Sequence[int], fraction: tuple[int, int], low: float | None, high: float | None
) -> float | None:
    """Return the nearest-rank percentile `num/den` estimated from bucket counts.

    The bucket holding rank ceil(num/den * n) answers its middle, clamped to [low, high] (the
    smallest and largest time seen), which can only bring it closer to the exact value.
    """
    n = sum(counts)
    if n == 0 or low is None or high is None:
        return None
    num, den = fraction
    rank = (n * num + den - 1) // den
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return min(max(bucket_middle(index), low), high)
    return high  # unreachable: the counts add up to n


def floor_to(moment: datetime, period_s: int) -> datetime:
    """Return the start of the period of `period_s` seconds holding `moment` (UTC)."""
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    return _EPOCH + timedelta(seconds=seconds - seconds % period_s)


def ceil_to(moment: datetime, period_s: int) -> datetime:
    """Return the first period start at or after `moment`."""
    start = floor_to(moment, period_s)
    return start if start == moment else start + timedelta(seconds=period_s)


def aggregate(rows: Iterable[Row]) -> list[Row]:
    """Return the rollup rows (per period, start, model version) that `rows` add up to.

    Rows without a model are left out: analytics are per model; so are shadow predictions, which
    are no traffic of the model's (`aggregate_shadows` sums them apart). The result is sorted by key so
    that concurrent writers lock rollup rows in one order (no deadlock between them). It runs on
    the event loop, once per written batch: rows are added to per-minute sums only (integer
    seconds as keys), and the hours and days are made from those minutes.
    """
    minutes: dict[tuple[int, uuid.UUID, uuid.UUID], Row] = {}
    for row in rows:
        model_id = row["model_id"]
        if model_id is None or row.get("shadow"):
            continue
        at: datetime = row["created_at"]
        seconds = int(at.timestamp())
        key = (seconds - seconds % MINUTE, model_id, row["version_id"] or NO_VERSION)
        out = minutes.get(key)
        if out is None:
            out = minutes[key] = _empty(MINUTE, key, row)
        out["requests"] += 1
        out["rows"] += row["n_rows"] or 0
        if at > out["last_at"]:
            out["last_at"] = at
        if row["status"] == PredictionStatus.ERROR:
            out["failures"] += 1
            continue
        _add_time(out, row["inference_time_ms"])
    return _with_longer_periods(minutes, _merge)


def _add_time(out: Row, ms: float | None) -> None:
    """Count one prediction's inference time into a rollup row: sum, extremes, bucket."""
    if ms is None:
        return
    out["timed"] += 1
    out["time_sum_ms"] += ms
    low, high = out["time_min_ms"], out["time_max_ms"]
    if low is None or ms < low:
        out["time_min_ms"] = ms
    if high is None or ms > high:
        out["time_max_ms"] = ms
    out[BUCKET_COLUMNS[bucket_of(ms)]] += 1


def _with_longer_periods(
    minutes: dict[tuple[int, uuid.UUID, uuid.UUID], Row], merge: Callable[[Row, Row], None]
) -> list[Row]:
    """Return the per-minute rollups and the hours and days made of them, sorted by key."""
    result = list(minutes.values())
    for period in (HOUR, DAY):
        longer: dict[tuple[int, uuid.UUID, uuid.UUID], Row] = {}
        for (start, model_id, version_id), minute in minutes.items():
            key = (start - start % period, model_id, version_id)
            found = longer.get(key)
            if found is None:
                longer[key] = {**minute, "period_s": period, "start_at": _at(key[0])}
            else:
                merge(found, minute)
        result.extend(longer.values())
    return sorted(
        result,
        key=lambda r: (r["period_s"], r["start_at"], r["model_id"].bytes, r["version_id"].bytes),
    )


def aggregate_shadows(rows: Iterable[Row]) -> list[Row]:
    """Return the shadow rollup rows (per period, start, shadow version) that `rows` add up to.

    Only shadow predictions count; each adds its comparison with the primary prediction (rows
    compared by label and those that agreed, or rows compared by value and their absolute
    differences), kept when the shadow row was written: analytics never read the raw log.
    """
    minutes: dict[tuple[int, uuid.UUID, uuid.UUID], Row] = {}
    for row in rows:
        model_id = row["model_id"]
        if model_id is None or not row.get("shadow") or row["version_id"] is None:
            continue
        at: datetime = row["created_at"]
        seconds = int(at.timestamp())
        key = (seconds - seconds % MINUTE, model_id, row["version_id"])
        out = minutes.get(key)
        if out is None:
            out = minutes[key] = dict.fromkeys(BUCKET_COLUMNS, 0)
            out.update(
                period_s=MINUTE,
                start_at=_at(key[0]),
                model_id=model_id,
                version_id=key[2],
                owner_id=row["owner_id"],
                version=row["version"],
                requests=0,
                failures=0,
                timed=0,
                time_sum_ms=0.0,
                time_min_ms=None,
                time_max_ms=None,
                label_rows=0,
                agreed_rows=0,
                value_rows=0,
                abs_diff_sum=0.0,
                last_at=at,
            )
        out["requests"] += 1
        if at > out["last_at"]:
            out["last_at"] = at
        if row["status"] == PredictionStatus.ERROR:
            out["failures"] += 1
            continue
        _add_time(out, row["inference_time_ms"])
        n_rows = row["n_rows"] or 0
        if row["agreed_rows"] is not None:
            out["label_rows"] += n_rows
            out["agreed_rows"] += row["agreed_rows"]
        elif row["abs_diff_sum"] is not None:
            out["value_rows"] += n_rows
            out["abs_diff_sum"] += row["abs_diff_sum"]
    return _with_longer_periods(minutes, _merge_shadow)


def _merge_shadow(into: Row, other: Row) -> None:
    for name in _SHADOW_SUMMED:
        into[name] += other[name]
    _merge_extremes(into, other)


def _at(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def _merge(into: Row, other: Row) -> None:
    for name in _SUMMED:
        into[name] += other[name]
    _merge_extremes(into, other)


def _merge_extremes(into: Row, other: Row) -> None:
    for name, pick in (("time_min_ms", min), ("time_max_ms", max)):
        if other[name] is not None:
            into[name] = other[name] if into[name] is None else pick(into[name], other[name])
    into["last_at"] = max(into["last_at"], other["last_at"])


def _empty(period: int, key: tuple[int, uuid.UUID, uuid.UUID], row: Row) -> Row:
    start, model_id, version_id = key
    out: Row = dict.fromkeys(BUCKET_COLUMNS, 0)
    out.update(
        period_s=period,
        start_at=_at(start),
        model_id=model_id,
        version_id=version_id,
        owner_id=row["owner_id"],
        version=row["version"],
        requests=0,
        failures=0,
        rows=0,
        timed=0,
        time_sum_ms=0.0,
        time_min_ms=None,
        time_max_ms=None,
        last_at=row["created_at"],
    )
    return out


async def add(db: AsyncSession, rollups: list[Row]) -> None:
    """Add rollup rows to the stored ones (upsert), in the caller's transaction."""
    await _upsert(db, prediction_rollups, _SUMMED, rollups)


async def add_shadows(db: AsyncSession, rollups: list[Row]) -> None:
    """Add shadow rollup rows to the stored ones (upsert), in the caller's transaction."""
    await _upsert(db, shadow_rollups, _SHADOW_SUMMED, rollups)


async def _upsert(
    db: AsyncSession, table: Table, summed: Sequence[str], rollups: list[Row]
) -> None:
    """Add `rollups` to `table`'s rows of the same keys: `summed` columns added, the extremes
    and `last_at` kept."""
    if not rollups:
        return
    stmt: postgresql.Insert | sqlite.Insert
    if db.get_bind().dialect.name == "postgresql":
        stmt = postgresql.insert(table)
        least, greatest = "least", "greatest"
    else:
        stmt = sqlite.insert(table)
        # SQLite's min() and max() with two arguments are the scalar functions.
        least, greatest = "min", "max"
    new = stmt.excluded

    def smallest(old: ColumnElement[Any], added: ColumnElement[Any]) -> ColumnElement[Any]:
        picked: ColumnElement[Any] = getattr(func, least)(
            func.coalesce(old, added), func.coalesce(added, old)
        )
        return picked

    def largest(old: ColumnElement[Any], added: ColumnElement[Any]) -> ColumnElement[Any]:
        picked: ColumnElement[Any] = getattr(func, greatest)(
            func.coalesce(old, added), func.coalesce(added, old)
        )
        return picked

    updates: dict[str, ColumnElement[Any]] = {name: table.c[name] + new[name] for name in summed}
    updates["time_min_ms"] = smallest(table.c.time_min_ms, new.time_min_ms)
    updates["time_max_ms"] = largest(table.c.time_max_ms, new.time_max_ms)
    updates["last_at"] = largest(table.c.last_at, new.last_at)
    upsert = stmt.on_conflict_do_update(
        index_elements=["period_s", "start_at", "model_id", "version_id"], set_=updates
    )
    # One statement executed for many rows, in key order (see `aggregate`).
    await db.execute(upsert, rollups)
