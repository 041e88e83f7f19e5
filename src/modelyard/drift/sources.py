"""Where feature values come from: a CSV or Parquet file of the caller's, read as a stream by
the one tabular reader (`modelyard.files.tabular`), and bounded samples of the prediction log.

Both end as `FeatureAccumulator`s or per-feature arrays, in memory bounded by the reader's
blocks and the sample sizes, never by the size of the file or of the log.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import and_, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.db.tables import Prediction
from modelyard.drift.stats import NUMERIC_TYPES, FeatureAccumulator, new_rng
from modelyard.errors import Unprocessable
from modelyard.files import tabular
from modelyard.files.tabular import TabularLimits

# Logged inputs one query may bring back, at most: a page holds this many bytes' worth of
# predictions at the log's payload budget (`prediction_log_max_payload_bytes`, 64 KiB: 256 of
# them), within LOG_PAGE_MIN..LOG_PAGE_MAX. Fewer, larger pages: PostgreSQL plans each page
# afresh (a few ms over the daily partitions), and the planning is most of a page's cost.
LOG_PAGE_BYTES = 16 * 1024 * 1024
LOG_PAGE_MIN = 10
LOG_PAGE_MAX = 1_000
# However many logged predictions lack usable inputs, a scan reads at most this many times the
# rows it wants: the cost stays bounded.
LOG_SCAN_FACTOR = 2


class InvalidReferenceFile(Unprocessable):
    """A reference file that cannot be read as the version's features."""

    type = "invalid-reference-file"


@dataclass(frozen=True, slots=True)
class Feature:
    """One input feature of a version: its name and the schema's type of it."""

    name: str
    type: str

    @property
    def is_numeric(self) -> bool:
        return self.type in NUMERIC_TYPES


@dataclass(slots=True)
class Summaries:
    """The features' accumulators once a source has been read, and its row count."""

    accumulators: dict[str, FeatureAccumulator]
    rows: int = 0


# --- a reference file: CSV or Parquet -----------------------------------------------------------


async def summarise_file(
    chunks: AsyncIterator[bytes],
    features: Sequence[Feature],
    *,
    tmp_dir: Path,
    limits: TabularLimits,
) -> Summaries:
    """Read a reference file, CSV or Parquet, and summarise the columns named like the numeric
    `features` (by name only; other columns are ignored).

    The file goes through the one tabular reader (`modelyard.files.tabular`): only those columns
    are kept, in blocks bounded by cells; Parquet (told by its `PAR1` magic) through a temporary
    file in `tmp_dir`, its footer checked before any row is read. Parsing runs in a worker thread
    (CPU-bound: a large file would stall every other request). Empty cells, nulls, `nan` and
    infinities count as missing values; `bool` features also take true/yes and false/no.

    Raises:
        InvalidReferenceFile: not UTF-8 CSV nor Parquet, no header, a feature's column missing or
            repeated, a ragged or too long line, a non-numeric value or column, no data rows, or
            past `limits` (columns, line length, rows).
    """
    numeric = [f for f in features if f.is_numeric]
    wanted = tabular.Wanted(
        names=tuple(f.name for f in numeric),
        kinds=tuple(
            tabular.Kind.BOOL if f.type == "bool" else tabular.Kind.NUMBER for f in numeric
        ),
    )
    summaries = _summaries(features)

    def summarise(reader: tabular.TableReader) -> None:
        while (block := reader.read(limits.block_cells)) is not None:
            for slot, feature in enumerate(numeric):
                summaries.accumulators[feature.name].add(block.values[:, slot])
            summaries.rows += block.rows

    try:
        async with tabular.open_table(
            chunks,
            format=None,
            wanted=wanted,
            limits=limits,
            what="the reference file",
            tmp_dir=tmp_dir,
        ) as reader:
            await tabular.read_in_thread(reader, lambda: summarise(reader))
    except tabular.ParquetUnavailable as exc:
        raise InvalidReferenceFile(
            "Parquet reference files need pyarrow on the server; give a CSV file"
        ) from exc
    except tabular.TabularError as exc:
        raise InvalidReferenceFile(exc.message) from exc
    if summaries.rows == 0:
        raise InvalidReferenceFile("the reference file has no data rows")
    return summaries


def _summaries(features: Sequence[Feature]) -> Summaries:
    rng = new_rng()
    return Summaries({f.name: FeatureAccumulator(rng) for f in features if f.is_numeric})


# --- the prediction log ---------------------------------------------------------------------


@dataclass(slots=True)
class LogSample:
    """Input rows read back from the log: a matrix of `rows` rows by feature (NaN: missing),
    allocated once at its bound (5,000 rows of 100 features: 4 MB)."""

    names: list[str]
    matrix: np.ndarray
    rows: int = 0
    predictions: int = 0
    # Predictions whose inputs were cut by the log's payload budget (or not kept), and the rows
    # they held: they cannot be read, so they are left out and counted.
    skipped_predictions: int = 0
    skipped_rows: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """Return each feature's values, by name."""
        return {name: self.matrix[: self.rows, i] for i, name in enumerate(self.names)}


async def sample_log(
    db: AsyncSession,
    *,
    model_id: uuid.UUID,
    version_id: uuid.UUID,
    features: Sequence[Feature],
    since: datetime,
    until: datetime,
    max_rows: int,
    newest_first: bool,
    max_payload_bytes: int,
) -> LogSample:
    """Read at most `max_rows` input rows of a version's successful predictions in a window.

    Newest first (a drift window) or oldest first (a reference from the first served rows).
    Keyset pages (see `LOG_PAGE_BYTES`) over the (model_id, created_at) index, bounded by the
    window's times (PostgreSQL reads only its daily partitions) and by at most
    `LOG_SCAN_FACTOR * max_rows` predictions, whatever the log holds.
    """
    sample = LogSample(
        [f.name for f in features], np.full((max_rows, len(features)), np.nan, dtype=np.float64)
    )
    order = (
        (Prediction.created_at.desc(), Prediction.id.desc())
        if newest_first
        else (Prediction.created_at.asc(), Prediction.id.asc())
    )
    if db.get_bind().dialect.name == "postgresql":
        # Plan each page for its own values, as the history lists do: a generic plan of the
        # prepared statement cannot prune the log's daily partitions by the window or cursor.
        await db.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    cursor: tuple[datetime, uuid.UUID] | None = None
    budget = LOG_SCAN_FACTOR * max_rows
    page_size = max(LOG_PAGE_MIN, min(LOG_PAGE_MAX, LOG_PAGE_BYTES // max_payload_bytes))
    while sample.rows < max_rows and budget > 0:
        query = (
            select(Prediction.id, Prediction.created_at, Prediction.inputs, Prediction.n_rows)
            .where(
                Prediction.model_id == model_id,
                Prediction.version_id == version_id,
                Prediction.status == "success",
                Prediction.created_at >= since,
                Prediction.created_at < until,
            )
            .order_by(*order)
            .limit(min(page_size, budget))
        )
        if cursor is not None:
            query = query.where(_beyond(cursor, newest_first=newest_first))
        page = (await db.execute(query)).all()
        for _, created_at, inputs, n_rows in page:
            if sample.rows >= max_rows:
                break
            _take(sample, created_at, inputs, n_rows, features, max_rows)
        budget -= len(page)
        if len(page) < page_size:
            break
        last = page[-1]
        cursor = (last.created_at, last.id)
    return sample


def _beyond(cursor: tuple[datetime, uuid.UUID], *, newest_first: bool) -> Any:
    at, prediction_id = cursor
    # The plain bound on created_at lets the (model_id, created_at) index bound the scan.
    if newest_first:
        return and_(
            Prediction.created_at <= at,
            or_(Prediction.created_at < at, Prediction.id < prediction_id),
        )
    return and_(
        Prediction.created_at >= at,
        or_(Prediction.created_at > at, Prediction.id > prediction_id),
    )


def _take(
    sample: LogSample,
    created_at: datetime,
    inputs: Any,
    n_rows: int,
    features: Sequence[Feature],
    max_rows: int,
) -> None:
    """Add a logged prediction's input rows (as many as still fit) to the sample."""
    rows = _rows_of(inputs, features, limit=max_rows - sample.rows)
    if rows is None:
        sample.skipped_predictions += 1
        sample.skipped_rows += n_rows
        return
    sample.predictions += 1
    if rows:
        sample.matrix[sample.rows : sample.rows + len(rows)] = rows
        sample.rows += len(rows)
    if sample.first_at is None or created_at < sample.first_at:
        sample.first_at = created_at
    if sample.last_at is None or created_at > sample.last_at:
        sample.last_at = created_at


def _rows_of(inputs: Any, features: Sequence[Feature], *, limit: int) -> list[list[float]] | None:
    """Return a logged request's first `limit` rows as one float per feature, or None when
    they cannot be read.

    Rows are lists in the schema's order or records by feature name, as the predict routes take
    them (V2 tensors are logged as rows). A truncated payload is a dict: unreadable.
    """
    if not isinstance(inputs, list):
        return None
    rows = []
    width = len(features)
    for item in inputs[:limit]:
        if isinstance(item, list):
            if len(item) != width:
                return None
            rows.append([_number(v) for v in item])
        elif isinstance(item, dict):
            rows.append([_number(item.get(f.name)) for f in features])
        else:
            return None
    return rows


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return float("nan")
