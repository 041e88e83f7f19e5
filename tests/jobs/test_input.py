"""A batch job's input read in chunks: at most the predict API's element budget per chunk, and
a worker's memory bounded however wide the model (#23: a 1,000-feature model took 10 million
values a chunk, +718 MiB). Memory is measured in a fresh interpreter (`tests.support.peak_memory`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelyard.config import Settings
from modelyard.files import tabular
from modelyard.jobs.runner import InputChunks, chunk_rows
from tests.files.tabular_files import MIB, file_chunks, memory_bound, write_wide_csv
from tests.serving.fakes import FakeRuntime
from tests.support.peak_memory import peak_growth

FEATURES = 1_000
LIMITS = tabular.TabularLimits()
CHUNK_ROWS = Settings.model_fields["batch_job_chunk_rows"].default
MAX_VALUES = Settings.model_fields["max_predict_elements"].default


async def read_chunks(path: Path, *, max_values: int = MAX_VALUES) -> list[np.ndarray]:
    """Read a job input of `FEATURES` columns as the runner does; return the chunks' shapes."""
    wanted = tabular.Wanted(names=None, count=FEATURES, by_position=True)
    shapes = []
    async with tabular.open_table(
        file_chunks(path),
        format=tabular.Format.CSV,
        wanted=wanted,
        limits=LIMITS,
        what="the input file",
        tmp_dir=path.parent,
    ) as reader:
        chunks = InputChunks(
            reader,
            runtime=FakeRuntime(n_features=FEATURES),
            chunk_rows=chunk_rows(CHUNK_ROWS, max_values, FEATURES),
        )
        while (chunk := await tabular.read_in_thread(chunks, chunks.next_chunk)) is not None:
            shapes.append(np.array(chunk.shape))
    return shapes


async def read_everything(path: Path) -> None:
    """What the measured process runs: every chunk of the input, at the default budget."""
    await read_chunks(path)


async def test_a_chunk_of_a_wide_model_holds_at_most_the_element_budget(tmp_path: Path) -> None:
    path = write_wide_csv(tmp_path / "in.csv", columns=FEATURES, rows=95)

    shapes = await read_chunks(path, max_values=20_000)

    assert [tuple(s) for s in shapes] == [(20, FEATURES)] * 4 + [(15, FEATURES)]


def test_a_wide_job_input_stays_within_the_memory_bound(tmp_path: Path) -> None:
    warm_up = write_wide_csv(tmp_path / "small.csv", columns=FEATURES, rows=30)
    wide = write_wide_csv(tmp_path / "wide.csv", columns=FEATURES, rows=3_000)
    # Two chunks at the element budget, as float64 (the one being filled and the last one,
    # still held by its caller), beside what the reader may take.
    bound = 2 * 8 * MAX_VALUES + memory_bound(LIMITS)

    growth = peak_growth(f"{__name__}:read_everything", warm_up, wide)

    assert wide.stat().st_size > 18 * MIB
    assert growth <= bound, f"{growth / MIB:.1f} MiB"
