"""Tabular files for the reader's tests: wide CSV, expanding Parquet, a stream of a file's chunks
as the store gives them, and the memory bound a read must stay within."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from modelyard.files.tabular import READ_BYTES, TabularLimits

MIB = 1024 * 1024
IRIS = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def memory_bound(limits: TabularLimits) -> int:
    """The most one read may add to a process at its peak, from the reader's limits: a block's
    strings with their lists (128 bytes a cell is generous), a line at its longest (4 bytes a
    character), and the read buffers (the store's chunk, the decoder's, Parquet's per column)
    within 16 MiB. About 28 MiB with the defaults."""
    return 128 * limits.block_cells + 4 * limits.max_line_chars + 16 * MIB


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """Yield a local file's bytes in the store's read size, as a store stream does."""
    with path.open("rb") as f:
        while piece := f.read(READ_BYTES):
            yield piece


def write_wide_csv(path: Path, *, columns: int, rows: int, kept: tuple[str, ...] = ()) -> Path:
    """Write `rows` rows of `columns` numbers (3 decimals); the last columns are named `kept`,
    the others `c0`, `c1`, ..."""
    names = [f"c{i}" for i in range(columns - len(kept))] + list(kept)
    values = np.random.default_rng(1).normal(size=(rows, columns))
    with path.open("w") as f:
        f.write(",".join(names) + "\n")
        np.savetxt(f, values, fmt="%.3f", delimiter=",")
    return path


def write_constant_parquet(path: Path, *, rows: int, names: tuple[str, ...] = IRIS) -> Path:
    """Write `rows` rows of one repeated number per column in one row group: a few KB that
    expand to `rows` x 8 bytes per column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.array(np.full(rows, 1.5))
    pq.write_table(
        pa.table(dict.fromkeys(names, column)),
        path,
        row_group_size=rows,
        compression="zstd",
    )
    return path
