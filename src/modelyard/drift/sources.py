"""Where feature values come from: a CSV or Parquet file of the caller's, read as a stream, and
bounded samples of the prediction log.

Both end as `FeatureAccumulator`s or per-feature arrays, in memory bounded by the chunk and the
sample sizes, never by the size of the file or of the log.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
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

# Rows read before their values are converted to numbers and summarised.
BLOCK_ROWS = 8_192
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
_TRUE = frozenset({"true", "yes"})
_FALSE = frozenset({"false", "no"})
PARQUET_MAGIC = b"PAR1"


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


# --- a reference file: CSV or Parquet ---------------------------------------------------------------------------------


class _ChunkReader(io.RawIOBase):
    """A blocking raw stream over the chunks of an object the event loop reads for it."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


async def summarise_file(
    chunks: AsyncIterator[bytes], features: Sequence[Feature], *, tmp_dir: Path
) -> Summaries:
    """Read a reference file, CSV or Parquet, and summarise the columns named like the numeric
    `features`.

    A CSV has a header row; it is parsed as it streams, so memory is one chunk plus one block of
    rows. A Parquet file (told by its `PAR1` magic) is written to a temporary file in `tmp_dir`
    first (Parquet keeps its index at the end) and read one record batch at a time. Parsing runs
    in a worker thread (CPU-bound: a large file would stall every other request), which pulls the
    chunks from the event loop one at a time. Empty cells, nulls, `nan` and infinities count as
    missing values.

    Raises:
        InvalidReferenceFile: not UTF-8 CSV nor Parquet, no header, a feature's column missing or
            repeated, a ragged line, a non-numeric value or column, no data rows.
    """
    loop = asyncio.get_running_loop()

    async def next_chunk() -> bytes | None:
        return await anext(chunks, None)

    def pulled() -> Iterator[bytes]:
        while (chunk := asyncio.run_coroutine_threadsafe(next_chunk(), loop).result()) is not None:
            if chunk:
                yield chunk

    def summarise() -> Summaries:
        stream = pulled()
        first = next(stream, b"")
        rest = itertools.chain([first], stream)
        if first.startswith(PARQUET_MAGIC):
            return _summarise_parquet(rest, features, tmp_dir)
        return _summarise_csv(rest, features)

    return await asyncio.to_thread(summarise)


def _summarise_csv(chunks: Iterator[bytes], features: Sequence[Feature]) -> Summaries:
    text = io.TextIOWrapper(
        io.BufferedReader(_ChunkReader(chunks)), encoding="utf-8-sig", newline=""
    )
    try:
        return _read_rows(text, features)
    except UnicodeDecodeError as exc:
        raise InvalidReferenceFile("the reference file is not UTF-8 text") from exc
    except csv.Error as exc:
        raise InvalidReferenceFile(f"the reference file is not valid CSV: {exc}") from exc


def _read_rows(text: io.TextIOWrapper, features: Sequence[Feature]) -> Summaries:
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        raise InvalidReferenceFile("the reference file is empty")
    columns = _columns([name.strip() for name in header], features)
    summaries = _summaries(features)
    types = {f.name: f.type for f in features if f.is_numeric}
    block: list[list[str]] = []
    first_line = 2  # the header is line 1
    for row in reader:
        if not row:
            continue  # a blank line
        if len(row) != len(header):
            raise InvalidReferenceFile(
                f"line {reader.line_num} has {len(row)} fields; the header has {len(header)}"
            )
        block.append(row)
        if len(block) == BLOCK_ROWS:
            _add_block(summaries, block, columns, types, first_line)
            first_line = reader.line_num + 1
            block = []
    if block:
        _add_block(summaries, block, columns, types, first_line)
    if summaries.rows == 0:
        raise InvalidReferenceFile("the reference file has no data rows")
    return summaries


def _columns(names: list[str], features: Sequence[Feature]) -> dict[str, int]:
    """Return where each numeric feature's column is among a file's column `names`.

    Raises:
        InvalidReferenceFile: a numeric feature has no column, or two.
    """
    columns: dict[str, int] = {}
    for feature in features:
        if not feature.is_numeric:
            continue
        positions = [i for i, name in enumerate(names) if name == feature.name]
        if len(positions) > 1:
            raise InvalidReferenceFile(f"the reference file has two columns {feature.name!r}")
        if positions:
            columns[feature.name] = positions[0]
    missing = [f.name for f in features if f.is_numeric and f.name not in columns]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InvalidReferenceFile(f"the reference file has no column {shown}{more}")
    return columns


def _summaries(features: Sequence[Feature]) -> Summaries:
    rng = new_rng()
    return Summaries({f.name: FeatureAccumulator(rng) for f in features if f.is_numeric})


def _add_block(
    summaries: Summaries,
    block: list[list[str]],
    columns: dict[str, int],
    types: dict[str, str],
    first_line: int,
) -> None:
    for name, position in columns.items():
        cells = [row[position].strip() for row in block]
        if types[name] == "bool":
            cells = [_bool_cell(c) for c in cells]
        cells = [c if c else "nan" for c in cells]
        try:
            values = np.asarray(cells, dtype=np.float64)
        except ValueError:
            values = _first_bad(cells, name, first_line)
        summaries.accumulators[name].add(values)
    summaries.rows += len(block)


def _bool_cell(cell: str) -> str:
    lowered = cell.lower()
    return "1" if lowered in _TRUE else "0" if lowered in _FALSE else cell


def _first_bad(cells: list[str], name: str, first_line: int) -> np.ndarray:
    """Raise for the first cell that is not a number (line numbers assume one line per row)."""
    for offset, cell in enumerate(cells):
        try:
            float(cell)
        except ValueError:
            shown = cell if len(cell) <= 32 else cell[:32] + "..."
            raise InvalidReferenceFile(
                f"column {name!r} holds a value that is not a number, {shown!r}, "
                f"near line {first_line + offset}"
            ) from None
    raise AssertionError("a block that numpy refused has a bad cell")  # pragma: no cover


# --- a Parquet file -----------------------------------------------------------------------------


def _summarise_parquet(
    chunks: Iterator[bytes], features: Sequence[Feature], tmp_dir: Path
) -> Summaries:
    # pyarrow is optional, not a dependency: once installed, pandas imports it too, which adds
    # ~170 MB of address space to every process importing pandas (the upload probe's included).
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InvalidReferenceFile(
            "Parquet reference files need pyarrow on the server; give a CSV file"
        ) from exc
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=tmp_dir, suffix=".parquet") as file:
        for chunk in chunks:
            file.write(chunk)
        file.flush()
        try:
            parquet = pq.ParquetFile(file.name)
        except (pa.ArrowException, OSError) as exc:
            raise InvalidReferenceFile("the reference file is not a readable Parquet file") from exc
        columns = _columns([field.name for field in parquet.schema_arrow], features)
        for name in columns:
            kind = parquet.schema_arrow.field(name).type
            if not (
                pa.types.is_integer(kind)
                or pa.types.is_floating(kind)
                or pa.types.is_boolean(kind)
                or pa.types.is_decimal(kind)
            ):
                raise InvalidReferenceFile(f"column {name!r} is not numeric ({kind})")
        summaries = _summaries(features)
        try:
            for batch in parquet.iter_batches(batch_size=BLOCK_ROWS, columns=list(columns)):
                for name in columns:
                    column = pc.cast(batch.column(name), pa.float64())
                    summaries.accumulators[name].add(column.to_numpy(zero_copy_only=False))
                summaries.rows += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise InvalidReferenceFile("the reference file is not a readable Parquet file") from exc
    if summaries.rows == 0:
        raise InvalidReferenceFile("the reference file has no data rows")
    return summaries


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
