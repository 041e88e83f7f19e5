"""A drift reference file costs a worker a bounded amount of memory, however wide or expanding
it is (#23: a reference CSV used to take about 17 times its size). Measured in a fresh
interpreter (`tests.support.peak_memory`), against a bound derived from the reader's limits."""

from __future__ import annotations

from pathlib import Path

from modelyard.drift.sources import Feature, summarise_file
from modelyard.files.tabular import TabularLimits
from tests.files.tabular_files import (
    IRIS,
    MIB,
    file_chunks,
    memory_bound,
    write_constant_parquet,
    write_wide_csv,
)
from tests.support.peak_memory import peak_growth

FEATURES = [Feature(name, "float") for name in IRIS]
LIMITS = TabularLimits()


async def summarise(path: Path) -> None:
    """What the measured process runs: a reference read as the drift routes read one."""
    await summarise_file(file_chunks(path), FEATURES, tmp_dir=path.parent, limits=LIMITS)


def test_a_wide_reference_csv_stays_within_the_memory_bound(tmp_path: Path) -> None:
    # 1,200 columns of which the version takes 4: about 15 MB, 2.4 million cells.
    warm_up = write_wide_csv(tmp_path / "small.csv", columns=1_200, rows=60, kept=IRIS)
    wide = write_wide_csv(tmp_path / "wide.csv", columns=1_200, rows=2_000, kept=IRIS)

    growth = peak_growth(f"{__name__}:summarise", warm_up, wide)

    assert wide.stat().st_size > 14 * MIB
    assert growth <= memory_bound(LIMITS), f"{growth / MIB:.1f} MiB"


def test_an_expanding_parquet_reference_stays_within_the_memory_bound(tmp_path: Path) -> None:
    # A few KB that expand to 32 MB of values: as many rows as a reference may have.
    warm_up = write_constant_parquet(tmp_path / "small.parquet", rows=100)
    expanding = write_constant_parquet(tmp_path / "big.parquet", rows=LIMITS.max_rows)

    growth = peak_growth(f"{__name__}:summarise", warm_up, expanding)

    assert expanding.stat().st_size < 64 * 1024
    assert growth <= memory_bound(LIMITS), f"{growth / MIB:.1f} MiB"
