"""One streaming reader of the tabular files in a person's area (a CSV file with a header row,
or a Parquet file), for drift references and batch-job inputs alike.

The reader keeps only the columns its caller takes and hands them over as blocks of float64
values bounded by cells (`TabularLimits.block_cells`), never by rows, so a wide file costs what
a narrow one does. Before any row is used it checks what bounds the work: the header's width,
each CSV line's length, the number of data rows; a Parquet file's footer (its size, row count,
row groups, column types and declared uncompressed sizes) is checked before a single row is
decoded, so a small file that declares hundreds of millions of rows is refused at once.

One set of column rules (`choose_columns`): the caller's columns by name, each exactly once;
or, where the caller allows it, every column in order when the file has as many as it takes.
Empty cells are missing (NaN); `true`/`yes` and `false`/`no` are 1 and 0 in boolean columns.

Error messages (`TabularError`) name a row, a line and a column, never a cell's value: whoever
reads an error may not be allowed to read the file.

Reading is blocking (CPU-bound parsing): readers are built and read in worker threads, and a
CSV reader pulls the store's chunks from the event loop one at a time (`BlockingStream`).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import csv
import io
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

import numpy as np

from modelyard.artifacts.store import open_local

if TYPE_CHECKING:
    from modelyard.config import Settings

# Values one block holds at most (rows times kept columns): a CSV block's strings take about
# 4 MiB, its float64 values 512 KiB, whatever the file's width.
BLOCK_CELLS = 65_536
# Bytes read from the store, and buffered before decoding, at a time.
READ_BYTES = 1 << 20
PARQUET_MAGIC = b"PAR1"
# A Parquet footer (the file's metadata) is parsed whole: at most this many bytes of it.
MAX_PARQUET_FOOTER_BYTES = 16 * 1024 * 1024
# A numeric column chunk may declare at most this many uncompressed bytes per value (a value
# takes at most 16: decimal128), plus this many for its page headers and dictionary.
MAX_BYTES_PER_VALUE = 32
CHUNK_OVERHEAD_BYTES = 64 * 1024
# Up to this many columns a CSV line is split whole; wider ones are walked to the kept columns.
SPLIT_MAX_COLUMNS = 64
# Most names (and characters of each) an error message lists.
LISTED_NAMES = 5
NAME_MAX_CHARS = 64
_TRUE = frozenset({"true", "yes"})
_FALSE = frozenset({"false", "no"})

T = TypeVar("T")


class TabularError(Exception):
    """A file that cannot be read as the caller's columns; the message is safe to show (it
    names rows, lines and columns, never a value)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ParquetUnavailable(TabularError):
    """pyarrow is not installed: Parquet cannot be read here."""

    def __init__(self) -> None:
        super().__init__("Parquet files need pyarrow on the server; give a CSV file")


class Format(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"


class Kind(StrEnum):
    """How a column's cells become numbers."""

    NUMBER = "number"
    BOOL = "bool"  # numbers, or true/yes and false/no (any case)


@dataclass(frozen=True, slots=True)
class TabularLimits:
    """What one read of a file may cost (see the settings of the same names)."""

    max_columns: int = 10_000
    max_line_chars: int = 1 << 20
    max_rows: int = 1_000_000
    block_cells: int = BLOCK_CELLS

    @classmethod
    def of(cls, settings: Settings, *, max_rows: int) -> Self:
        """Return the settings' limits, reading at most `max_rows` data rows."""
        return cls(
            max_columns=settings.tabular_max_columns,
            max_line_chars=settings.tabular_max_line_chars,
            max_rows=max_rows,
        )


@dataclass(frozen=True, slots=True)
class Wanted:
    """The columns a caller takes: `names` (the features, in the caller's order) by name, each
    exactly once; with `by_position`, every column in order instead when the file does not name
    them all and has `count` columns (any number when `count` is None)."""

    names: tuple[str, ...] | None
    kinds: tuple[Kind, ...] | None = None
    count: int | None = None
    by_position: bool = False


@dataclass(frozen=True, slots=True)
class Selection:
    """Where the wanted columns are in a file, with what each is called in messages."""

    positions: list[int]
    labels: list[str]
    kinds: list[Kind]


@dataclass(slots=True)
class Block:
    """Consecutive data rows of the kept columns: `values` is rows by columns (column-major, so
    each column is contiguous); `first_row` is 1-based, counted after the header."""

    values: np.ndarray
    first_row: int
    lines: array.array[int] | None = None  # each row's first line (CSV only)

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    def where(self, offset: int) -> str:
        """Name row `offset` of the block (0-based) in a message: its row and line."""
        row = self.first_row + offset
        return f"row {row} (line {self.lines[offset]})" if self.lines is not None else f"row {row}"


class TableReader(Protocol):
    """A file opened for reading: blocks of its kept columns. Blocking: call it from a thread."""

    selection: Selection
    rows_total: int | None  # known up front for Parquet

    def read(self, max_rows: int) -> Block | None:
        """Return the next block of at most `max_rows` rows, or None at the end of the file.

        Raises:
            TabularError: a row is ragged, too long or holds a value that is not a number, or
                the file has more rows than the limit.
        """

    def skip(self, rows: int) -> None:
        """Pass over the next `rows` data rows (or up to the end of the file)."""

    def stop(self) -> None:
        """Make a read in progress end soon (it may be waiting for the event loop)."""


def listed(names: Sequence[str]) -> str:
    """Return at most `LISTED_NAMES` names, quoted and cut, and how many more there are."""
    shown = ", ".join(repr(_cut(name)) for name in names[:LISTED_NAMES])
    more = len(names) - LISTED_NAMES
    return shown + (f" and {more} more" if more > 0 else "")


def _cut(name: str) -> str:
    return name if len(name) <= NAME_MAX_CHARS else name[:NAME_MAX_CHARS] + "..."


def choose_columns(header: Sequence[str], wanted: Wanted, *, what: str) -> Selection:
    """Return where `wanted`'s columns are among a file's column names (see `Wanted`).

    Raises:
        TabularError: a wanted name is missing (and the columns cannot be taken in order) or
            names two columns.
    """
    names = list(wanted.names) if wanted.names is not None else None
    kinds = list(wanted.kinds) if wanted.kinds is not None else None
    if names:
        wanted_names = set(names)
        found: dict[str, int] = {}
        for position, name in enumerate(header):
            if name in wanted_names:
                if name in found:
                    raise TabularError(f"{what} has two columns {_cut(name)!r}")
                found[name] = position
        if len(found) == len(wanted_names):
            return Selection(
                positions=[found[name] for name in names],
                labels=[repr(_cut(name)) for name in names],
                kinds=kinds or [Kind.NUMBER] * len(names),
            )
    if wanted.by_position and (wanted.count is None or len(header) == wanted.count):
        width = len(header)
        return Selection(
            positions=list(range(width)),
            labels=[str(i + 1) for i in range(width)],
            kinds=kinds if kinds and len(kinds) == width else [Kind.NUMBER] * width,
        )
    missing = [name for name in names or [] if name not in header]
    if not wanted.by_position:
        raise TabularError(f"{what} has no column {listed(missing)}")
    message = f"the model takes {wanted.count} features; {what} has {len(header)} columns"
    if missing:
        message += " and lacks the columns " + ", ".join(_cut(n) for n in missing[:LISTED_NAMES])
        more = len(missing) - LISTED_NAMES
        message += f" and {more} more" if more > 0 else ""
    raise TabularError(message)


def _block_rows(limits: TabularLimits, width: int) -> int:
    return max(1, limits.block_cells // max(1, width))


def _floats(cells: list[str], kind: Kind) -> tuple[np.ndarray, int | None]:
    """Return a column's cells as float64 (empty: NaN), and the offset of the first cell that is
    not a number (None when all are)."""
    try:
        # numpy parses as `float` does, surrounding whitespace included: the common case.
        return np.array(cells, dtype=np.float64), None
    except ValueError:
        pass
    values = np.empty(len(cells), dtype=np.float64)
    for i, cell in enumerate(cells):
        text = cell.strip()
        if not text:
            values[i] = np.nan
            continue
        if kind is Kind.BOOL:
            lowered = text.lower()
            if lowered in _TRUE:
                values[i] = 1.0
                continue
            if lowered in _FALSE:
                values[i] = 0.0
                continue
        try:
            values[i] = float(text)
        except ValueError:
            return values, i
    return values, None


# --- CSV ----------------------------------------------------------------------------------------


# How often a reader thread waiting for the event loop checks that the loop still runs.
LOOP_CHECK_SECONDS = 0.5


class BlockingStream(io.RawIOBase):
    """An async stream of chunks read from a worker thread: each read waits for the event loop
    to fetch the next chunk (the loop is free meanwhile: it awaits the thread)."""

    def __init__(
        self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop, first: bytes = b""
    ) -> None:
        super().__init__()
        self._chunks = chunks
        self._loop = loop
        self._piece = memoryview(first)
        self._ended = False

    def readable(self) -> bool:
        return True

    def stop(self) -> None:
        """Read nothing more: the next read ends the file."""
        self._ended = True
        self._piece = memoryview(b"")

    def readinto(self, buffer: Any) -> int:
        while not self._piece:
            if self._ended:
                return 0
            piece = self._fetch()
            if not piece:
                self._ended = True
                return 0
            self._piece = memoryview(piece)
        n = min(len(buffer), len(self._piece))
        buffer[:n] = self._piece[:n]
        self._piece = self._piece[n:]
        return n

    def _fetch(self) -> bytes:
        """The next chunk, fetched by the event loop; an error once the loop has stopped (its
        task was cancelled and the loop closed: the fetch would never run and the thread, which
        the interpreter waits for at exit, would wait forever)."""
        fetch = asyncio.run_coroutine_threadsafe(_next_piece(self._chunks), self._loop)
        while True:
            try:
                return fetch.result(timeout=LOOP_CHECK_SECONDS)
            except TimeoutError:
                if not self._loop.is_running():
                    fetch.cancel()
                    self._ended = True
                    raise OSError("the reader's event loop stopped") from None


async def _next_piece(chunks: AsyncIterator[bytes]) -> bytes:
    # An empty chunk in the middle is skipped: only the end of the stream reads as empty.
    while (piece := await anext(chunks, None)) is not None:
        if piece:
            return piece
    return b""


def _terminator(line: str) -> int:
    if line.endswith("\r\n"):
        return 2
    return 1 if line.endswith(("\n", "\r")) else 0


def _lines_pattern(width: int) -> re.Pattern[str]:
    """Match lines (each ending in a newline) of exactly `width` unquoted fields, none blank."""
    if width == 1:
        return re.compile(r"(?:[^,\n]+\n)*")
    return re.compile(f"(?:[^,\\n]*(?:,[^,\\n]*){{{width - 1}}}\\n)*")


class CsvReader:
    """A UTF-8 CSV file with a header row (a BOM is ignored), parsed as it streams.

    Lines with quotes go through the `csv` module one record at a time; the others are cut at
    their commas without the module: narrow files (up to `SPLIT_MAX_COLUMNS` columns) a buffer
    of lines at once (one pattern checks every line's width first), wide ones line by line, each
    walked from one kept column to the next by a compiled pattern rather than split whole.
    Blank lines are skipped. Text is decoded `block_cells` characters at a time, so a block's
    strings never outnumber the block's cells. Blocking: build and read it from a thread.
    """

    rows_total: int | None = None

    def __init__(
        self,
        raw: io.RawIOBase | io.BytesIO,
        wanted: Wanted,
        limits: TabularLimits,
        *,
        what: str,
    ) -> None:
        self._raw = raw
        buffered = raw if isinstance(raw, io.BytesIO) else io.BufferedReader(raw, READ_BYTES)
        self._text = io.TextIOWrapper(buffered, encoding="utf-8-sig", newline="")
        self._limits = limits
        self._what = what
        self._buf = ""  # decoded text; `_pos` is where the next line starts
        self._pos = 0
        self._eof = False
        self._has_cr = False  # a carriage return was seen: line ends are looked for both ways
        # Lines before this offset of `_buf` go one by one: the bulk path refused them.
        self._slow_until = 0
        self._line = 0  # physical lines read
        self._row = 0  # data rows read
        self._record_chars = 0  # characters of the record being read, and its first line
        self._record_line = 0
        self._pending_line: str | None = None
        self._ready: Block | None = None  # rows parsed, not handed out yet
        self._csv = csv.reader(self._quoted_lines())
        header = self._header()
        self._width = len(header)
        self.selection = choose_columns(header, wanted, what=what)
        self._kept = len(self.selection.positions)
        self._block_rows = _block_rows(limits, self._kept)
        self._bulk_lines = _lines_pattern(self._width) if self._width <= SPLIT_MAX_COLUMNS else None
        # Wide lines: from one kept column to the next, skipping `gap` fields in one match.
        order = sorted(range(self._kept), key=lambda slot: self.selection.positions[slot])
        self._walk: list[tuple[int, re.Pattern[str] | None]] = []
        previous = -1
        for slot in order:
            gap = self.selection.positions[slot] - previous - 1
            self._walk.append((slot, re.compile(f"(?:[^,]*,){{{gap}}}") if gap else None))
            previous = self.selection.positions[slot]

    # -- text and lines

    def _more(self) -> bool:
        """Decode the next piece of text into the buffer; False at the end of the file."""
        if self._eof:
            return False
        try:
            text = self._text.read(self._limits.block_cells)
        except UnicodeDecodeError as exc:
            raise TabularError(f"{self._what} is not UTF-8 text") from exc
        if not text:
            self._eof = True
            return False
        self._has_cr = self._has_cr or "\r" in text
        self._slow_until = max(0, self._slow_until - self._pos)
        self._buf = self._buf[self._pos :] + text
        self._pos = 0
        return True

    def _line_end(self) -> int:
        """Return where the line at `_pos` ends (past its terminator), or -1 if not buffered."""
        buf, start = self._buf, self._pos
        newline = buf.find("\n", start)
        if not self._has_cr:
            return newline + 1 if newline >= 0 else -1
        cr = buf.find("\r", start, newline if newline >= 0 else len(buf))
        if cr < 0:
            return newline + 1 if newline >= 0 else -1
        if cr + 1 < len(buf):
            return cr + 2 if buf[cr + 1] == "\n" else cr + 1
        return cr + 1 if self._eof else -1  # a CR ending the buffer may be half of a CRLF

    def _physical_line(self) -> str:
        """Return the next line with its terminator ('' at the end of the file).

        Raises:
            TabularError: the line, or the record it continues, is longer than the limit.
        """
        cap = self._limits.max_line_chars
        while (end := self._line_end()) < 0:
            if len(self._buf) - self._pos > cap + 2:
                raise TabularError(f"line {self._line + 1} is longer than {cap} characters")
            if not self._more():
                end = len(self._buf)
                break
        line = self._buf[self._pos : end]
        self._pos = end
        if not line:
            return line
        self._line += 1
        if not self._record_chars:
            self._record_line = self._line
        # A record's line breaks inside quoted values count; its final one does not.
        self._record_chars += len(line)
        if self._record_chars - _terminator(line) > cap:
            raise TabularError(f"line {self._record_line} is longer than {cap} characters")
        return line

    def _quoted_lines(self) -> Iterator[str]:
        """The lines the `csv` module parses: the one at hand, then (inside a quoted value that
        spans lines) the next ones, each counted against the same record's length."""
        while True:
            if self._pending_line is not None:
                line, self._pending_line = self._pending_line, None
            else:
                line = self._physical_line()
                if not line:
                    return
            yield line

    def _parse_quoted(self, line: str) -> list[str]:
        self._pending_line = line
        try:
            return next(self._csv)
        except csv.Error as exc:
            # The module's messages name no value ("unexpected end of data", ...).
            raise TabularError(
                f"{self._what} is not valid CSV at line {self._line}: {exc}"
            ) from exc
        except StopIteration:  # pragma: no cover - a pending line always makes a record
            raise TabularError(f"{self._what} is not valid CSV at line {self._line}") from None

    def _header(self) -> list[str]:
        self._record_chars = 0
        line = self._physical_line()
        if not line:
            raise TabularError(f"{self._what} is empty: a CSV file starts with a header row")
        if '"' in line:
            fields = self._parse_quoted(line)
        else:
            fields = line[: len(line) - _terminator(line)].split(",")
        if len(fields) > self._limits.max_columns:
            raise TabularError(
                f"{self._what} has {len(fields)} columns; at most {self._limits.max_columns} "
                "are read"
            )
        return [name.strip() for name in fields]

    # -- rows

    def _count_row(self, rows: int = 1) -> None:
        self._row += rows
        if self._row > self._limits.max_rows:
            raise TabularError(
                f"{self._what} has more than {self._limits.max_rows} data rows, the most this "
                "server reads"
            )

    def _next_record(self) -> tuple[list[str], int] | None:
        """Return the next data row's kept cells and its first line, or None at the end."""
        while True:
            self._record_chars = 0
            line = self._physical_line()
            if not line:
                return None
            end = len(line) - _terminator(line)
            if end == 0:
                continue  # a blank line
            first_line = self._line
            self._count_row()
            if '"' in line:
                row = self._parse_quoted(line)
                if len(row) != self._width:
                    raise self._ragged(len(row), first_line)
                return [row[p] for p in self.selection.positions], first_line
            fields = line.count(",", 0, end) + 1
            if fields != self._width:
                raise self._ragged(fields, first_line)
            if self._bulk_lines is not None:
                cells = line[:end].split(",")
                return [cells[p] for p in self.selection.positions], first_line
            return self._walked(line, end), first_line

    def _walked(self, line: str, end: int) -> list[str]:
        cells = [""] * self._kept
        start = 0
        for slot, skip in self._walk:
            if skip is not None:
                match = skip.match(line, start, end)
                assert match is not None  # noqa: S101 - the line's commas were counted
                start = match.end()
            stop = line.find(",", start, end)
            if stop < 0:
                stop = end
            cells[slot] = line[start:stop]
            start = stop + 1
        return cells

    def _ragged(self, fields: int, line: int) -> TabularError:
        return TabularError(
            f"row {self._row} (line {line}) has {fields} fields; the header has {self._width}"
        )

    def _not_a_number(self, row: int, line: int, slot: int) -> TabularError:
        return TabularError(
            f"row {row} (line {line}), column {self.selection.labels[slot]}: not a number"
        )

    def _bulk(self) -> Block | None:
        """Parse every buffered complete line at once, or return None (and leave them to
        `_line_by_line`) when one is quoted, blank, ragged or too long."""
        if self._bulk_lines is None or self._pos < self._slow_until:
            return None
        if self._buf.find("\n", self._pos) < 0:
            self._more()
        end = self._buf.rfind("\n", self._pos) + 1
        if end <= self._pos:
            return None
        text = self._buf[self._pos : end]
        if self._has_cr:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if (
            len(text) > self._limits.max_line_chars
            or '"' in text
            or not self._bulk_lines.fullmatch(text)
        ):
            self._slow_until = end
            return None
        rows = text.count("\n")
        first_row, first_line = self._row + 1, self._line + 1
        self._count_row(rows)
        cells = text[:-1].replace("\n", ",").split(",")
        values = np.empty((rows, self._kept), dtype=np.float64, order="F")
        for slot, position in enumerate(self.selection.positions):
            column, bad = _floats(cells[position :: self._width], self.selection.kinds[slot])
            if bad is not None:
                raise self._not_a_number(first_row + bad, first_line + bad, slot)
            values[:, slot] = column
        self._line += rows
        self._pos = end
        return Block(values, first_row, array.array("q", range(first_line, first_line + rows)))

    def _line_by_line(self) -> Block | None:
        rows: list[list[str]] = []
        lines = array.array("q")
        while len(rows) < self._block_rows:
            if rows and self._bulk_lines is not None and self._pos >= self._slow_until:
                break  # the lines after these may go in bulk again
            record = self._next_record()
            if record is None:
                break
            rows.append(record[0])
            lines.append(record[1])
        if not rows:
            return None
        first = self._row - len(rows) + 1
        values = np.empty((len(rows), self._kept), dtype=np.float64, order="F")
        for slot in range(self._kept):
            column, bad = _floats([row[slot] for row in rows], self.selection.kinds[slot])
            if bad is not None:
                raise self._not_a_number(first + bad, lines[bad], slot)
            values[:, slot] = column
        return Block(values, first, lines)

    # -- the reader

    def read(self, max_rows: int) -> Block | None:
        block = self._ready
        if block is None:
            block = self._bulk() or self._line_by_line()
            if block is None:
                return None
        max_rows = max(1, max_rows)
        if block.rows <= max_rows:
            self._ready = None
            return block
        lines = block.lines
        assert lines is not None  # noqa: S101 - CSV blocks know their lines
        self._ready = Block(block.values[max_rows:], block.first_row + max_rows, lines[max_rows:])
        return Block(block.values[:max_rows], block.first_row, lines[:max_rows])

    def skip(self, rows: int) -> None:
        while rows > 0 and (block := self.read(rows)) is not None:
            rows -= block.rows

    def stop(self) -> None:
        if isinstance(self._raw, BlockingStream):
            self._raw.stop()


# --- Parquet ------------------------------------------------------------------------------------


class ParquetReader:
    """A local Parquet file, its footer checked first, read one bounded record batch at a time.

    Raises (from the constructor):
        ParquetUnavailable: pyarrow is not installed.
        TabularError: not a readable Parquet file; too many columns or rows; a kept column that
            is not numeric; a row group that declares more bytes than its numbers can take.
    """

    def __init__(self, path: Path, wanted: Wanted, limits: TabularLimits, *, what: str) -> None:
        # pyarrow is imported here, not at start-up: it costs every process ~35 MiB (see
        # `serving.warmup`), and only Parquet needs it.
        try:
            import pyarrow as pa
            import pyarrow.compute as pc
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ParquetUnavailable() from exc
        self._float64 = pa.float64()
        self._cast = pc.cast
        self._what = what
        self._errors: tuple[type[Exception], ...] = (pa.ArrowException, OSError, ValueError)
        unreadable = f"{what} is not a readable Parquet file"
        footer = _footer_bytes(path)
        if footer is None:
            raise TabularError(unreadable)
        if footer > MAX_PARQUET_FOOTER_BYTES:
            raise TabularError(
                f"{what} has {footer} bytes of Parquet metadata; at most "
                f"{MAX_PARQUET_FOOTER_BYTES} are read"
            )
        try:
            parquet = pq.ParquetFile(
                path,
                # Column chunks stream through a buffer instead of being read whole.
                buffer_size=READ_BYTES,
                pre_buffer=False,
                thrift_string_size_limit=MAX_PARQUET_FOOTER_BYTES,
                thrift_container_size_limit=MAX_PARQUET_FOOTER_BYTES,
            )
            metadata = parquet.metadata
            schema = parquet.schema_arrow
        except self._errors as exc:
            raise TabularError(unreadable) from exc
        if metadata.num_columns > limits.max_columns or len(schema) > limits.max_columns:
            raise TabularError(
                f"{what} has {max(metadata.num_columns, len(schema))} columns; at most "
                f"{limits.max_columns} are read"
            )
        if metadata.num_rows > limits.max_rows:
            raise TabularError(
                f"{what} has {metadata.num_rows} data rows, more than the {limits.max_rows} "
                "this server reads"
            )
        header = list(schema.names)
        self.selection = choose_columns(header, wanted, what=what)
        self._names = [header[p] for p in self.selection.positions]
        if len(set(self._names)) != len(self._names):
            raise TabularError(f"{what} has two columns of the same name")
        for name, label in zip(self._names, self.selection.labels, strict=True):
            kind = schema.field(name).type
            if not _is_numeric(pa, kind):
                raise TabularError(f"column {label} is not numeric ({kind})")
        self._group_rows = _check_row_groups(metadata, self._names, self.selection.labels, what)
        self.rows_total: int | None = int(metadata.num_rows)
        self._parquet = parquet
        self._batch_rows = _block_rows(limits, len(self._names))
        self._batches: Iterator[Any] | None = None
        self._pending: Any = None  # the rest of the last batch read
        self._row = 0
        self._skip = 0

    def _open_batches(self) -> Iterator[Any]:
        # Start at the row group holding the first row wanted: the ones before are not read.
        start, group = self._skip, 0
        while group < len(self._group_rows) and start >= self._group_rows[group]:
            start -= self._group_rows[group]
            group += 1
        self._row += self._skip - start
        self._skip = start
        if not self._names:
            return iter(())
        return iter(
            self._parquet.iter_batches(
                batch_size=self._batch_rows,
                row_groups=range(group, len(self._group_rows)),
                columns=self._names,
                use_threads=False,
            )
        )

    def _next_batch(self) -> Any:
        """Return the next record batch past the rows to skip, or None at the end."""
        if self._batches is None:
            self._batches = self._open_batches()
        while True:
            if self._pending is not None:
                batch, self._pending = self._pending, None
            else:
                try:
                    batch = next(self._batches, None)
                except self._errors as exc:
                    raise TabularError(
                        f"{self._what} is not a readable Parquet file (after row {self._row})"
                    ) from exc
            if batch is None or not self._skip:
                return batch
            if self._skip < batch.num_rows:
                self._row += self._skip
                batch, self._skip = batch.slice(self._skip), 0
                return batch
            self._skip -= batch.num_rows
            self._row += batch.num_rows

    def read(self, max_rows: int) -> Block | None:
        if not self._names:
            return self._read_nothing(max_rows)
        batch = self._next_batch()
        if batch is None:
            return None
        want = max(1, min(max_rows, self._batch_rows))
        if batch.num_rows > want:
            batch, self._pending = batch.slice(0, want), batch.slice(want)
        first = self._row + 1
        self._row += batch.num_rows
        if self.rows_total is not None and self._row > self.rows_total:
            raise TabularError(f"{self._what} holds more rows than its metadata declares")
        values = np.empty((batch.num_rows, len(self._names)), dtype=np.float64, order="F")
        for slot, name in enumerate(self._names):
            try:
                column = self._cast(batch.column(name), self._float64, safe=False)
                values[:, slot] = column.to_numpy(zero_copy_only=False)
            except self._errors as exc:
                raise TabularError(
                    f"rows {first}..{self._row}, column {self.selection.labels[slot]}: the "
                    "values are not all numbers"
                ) from exc
        return Block(values=values, first_row=first)

    def _read_nothing(self, max_rows: int) -> Block | None:
        """No column is kept: only rows are counted."""
        total = self.rows_total or 0
        start = self._row + self._skip
        self._skip = 0
        rows = min(max_rows, self._batch_rows, total - start)
        if rows <= 0:
            self._row = max(self._row, start)
            return None
        self._row = start + rows
        return Block(values=np.empty((rows, 0), dtype=np.float64), first_row=start + 1)

    def skip(self, rows: int) -> None:
        # Before the first read, whole row groups are passed over unread (`_open_batches`).
        self._skip += rows

    def stop(self) -> None:
        """Nothing to do: the file is local, a read ends by itself."""


def _footer_bytes(path: Path) -> int | None:
    """Return the size of a Parquet file's footer from its last 8 bytes, or None when the file
    does not start and end with the Parquet magic."""
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if head != PARQUET_MAGIC or size < 12:
            return None
        f.seek(size - 8)
        tail = f.read(8)
    if tail[4:] != PARQUET_MAGIC:
        return None
    footer = int.from_bytes(tail[:4], "little")
    return footer if footer <= size - 12 else None


def _is_numeric(pa: Any, kind: Any) -> bool:
    types = pa.types
    return bool(
        types.is_integer(kind)
        or types.is_floating(kind)
        or types.is_boolean(kind)
        or types.is_decimal(kind)
    )


def _check_row_groups(metadata: Any, names: list[str], labels: list[str], what: str) -> list[int]:
    """Return each row group's row count, once the groups are known to add up to the file's rows
    and the kept columns to declare no more bytes than their numbers take.

    Raises:
        TabularError: they do not.
    """
    leaf = {metadata.schema.column(j).path: j for j in range(metadata.num_columns)}
    columns = [(leaf.get(name), label) for name, label in zip(names, labels, strict=True)]
    counts: list[int] = []
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        rows = int(group.num_rows)
        if rows < 0:
            raise TabularError(f"{what} is not a readable Parquet file")
        bound = rows * MAX_BYTES_PER_VALUE + CHUNK_OVERHEAD_BYTES
        for j, label in columns:
            if j is None:
                raise TabularError(f"column {label} is not numeric (a nested column)")
            if int(group.column(j).total_uncompressed_size) > bound:
                raise TabularError(
                    f"row group {g + 1} of {what} declares more bytes for column {label} than "
                    f"its {rows} numbers can take"
                )
        counts.append(rows)
    if sum(counts) != metadata.num_rows:
        raise TabularError(f"{what} is not a readable Parquet file")
    return counts


# --- opening a file of the store ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_table(
    chunks: AsyncIterator[bytes],
    *,
    format: Format | None,
    wanted: Wanted,
    limits: TabularLimits,
    what: str,
    tmp_dir: Path,
) -> AsyncIterator[TableReader]:
    """Open a file's chunks as a table: CSV streamed as it is read, Parquet (told by `format`,
    else by its `PAR1` magic) through a temporary file in `tmp_dir` (its index is at its end).

    The reader is built (the header or footer read and checked) in a thread; read it from
    threads too (`read_in_thread`). The caller closes `chunks`.

    Raises:
        TabularError: see `CsvReader` and `ParquetReader`.
    """
    loop = asyncio.get_running_loop()
    first = await _next_piece(chunks)
    is_parquet = format is Format.PARQUET or (format is None and first.startswith(PARQUET_MAGIC))
    if not is_parquet:
        raw = BlockingStream(chunks, loop, first)
        reader: TableReader = await read_in_thread(
            raw, lambda: CsvReader(raw, wanted, limits, what=what)
        )
        yield reader
        return
    path = await _download(first, chunks, tmp_dir)
    try:
        yield await asyncio.to_thread(ParquetReader, path, wanted, limits, what=what)
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)


class _Stoppable(Protocol):
    def stop(self) -> None: ...


async def read_in_thread(reader: _Stoppable, read: Callable[[], T]) -> T:
    """Run `read` (a blocking read of `reader`) in a thread. Cancelled, stop the reader and wait
    for the thread to end before going on: it may be reading the input through the event loop,
    and the input is closed once this returns."""
    reading = asyncio.ensure_future(asyncio.to_thread(read))
    try:
        return await asyncio.shield(reading)
    except asyncio.CancelledError:
        reader.stop()
        with contextlib.suppress(Exception):
            await reading
        raise


async def _download(first: bytes, chunks: AsyncIterator[bytes], tmp_dir: Path) -> Path:
    """Write `first` and the rest of `chunks` to a new file in `tmp_dir`; return its path."""
    await asyncio.to_thread(tmp_dir.mkdir, parents=True, exist_ok=True)
    fd, name = await asyncio.to_thread(tempfile.mkstemp, dir=tmp_dir, suffix=".parquet")
    await asyncio.to_thread(os.close, fd)
    path = Path(name)
    try:
        out = await open_local(path, "wb")
        try:
            piece = first
            while piece:
                await asyncio.to_thread(out.write, piece)
                piece = await _next_piece(chunks)
        finally:
            await asyncio.to_thread(out.close)
    except BaseException:
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    return path
