"""The one tabular reader: column rules, CSV parsing, Parquet footer checks, limits, and error
messages that never quote a value."""

from __future__ import annotations

import csv
import decimal
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelyard.files import tabular
from modelyard.files.tabular import (
    CsvReader,
    Kind,
    ParquetReader,
    TableReader,
    TabularError,
    TabularLimits,
    Wanted,
)
from tests.files.tabular_files import IRIS, write_constant_parquet, write_wide_csv

WHAT = "the file"
BY_NAME = Wanted(names=("b", "a"))
# A value no message may show: whoever reads an error may not be allowed to read the file.
SECRET = "s3cr3t@example.com"


def csv_reader(text: str | bytes, wanted: Wanted = BY_NAME, **limits: int) -> CsvReader:
    data = text.encode() if isinstance(text, str) else text
    return CsvReader(io.BytesIO(data), wanted, TabularLimits(**limits), what=WHAT)


def read_all(reader: TableReader, max_rows: int = 1_000_000) -> list[tabular.Block]:
    blocks = []
    while (block := reader.read(max_rows)) is not None:
        blocks.append(block)
    return blocks


def values(reader: TableReader) -> list[list[float]]:
    return [row for block in read_all(reader) for row in block.values.tolist()]


def csv_error(text: str, wanted: Wanted = BY_NAME, **limits: int) -> str:
    with pytest.raises(TabularError) as caught:
        read_all(csv_reader(text, wanted, **limits))
    return caught.value.message


def parquet_file(tmp_path: Path, columns: dict[str, Any], **options: Any) -> Path:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table(columns), path, **options)
    return path


# --- column rules ---------------------------------------------------------------------------------


def test_columns_are_kept_by_name_in_the_callers_order() -> None:
    reader = csv_reader("a,x,b\n1,9,2\n3,9,4\n")

    assert values(reader) == [[2.0, 1.0], [4.0, 3.0]]
    assert reader.selection.positions == [2, 0]


def test_header_names_are_matched_without_surrounding_spaces() -> None:
    assert values(csv_reader(" a , b\n1,2\n")) == [[2.0, 1.0]]


def test_every_column_in_order_when_the_header_does_not_name_them_and_the_width_fits() -> None:
    wanted = Wanted(names=("x", "y", "z"), count=3, by_position=True)

    reader = csv_reader("p,q,r\n1,2,3\n", wanted)

    assert values(reader) == [[1.0, 2.0, 3.0]]
    assert reader.selection.labels == ["1", "2", "3"]


def test_names_win_over_positions_when_the_header_names_every_feature() -> None:
    wanted = Wanted(names=("b", "a"), count=2, by_position=True)

    assert values(csv_reader("id,a,b\nx1,1,2\n", wanted)) == [[2.0, 1.0]]


def test_a_missing_column_is_named_when_only_names_count() -> None:
    assert csv_error("a,c\n1,2\n") == "the file has no column 'b'"


def test_a_header_that_fits_neither_way_says_what_the_model_takes() -> None:
    wanted = Wanted(names=("w", "x", "y", "z"), count=4, by_position=True)

    message = csv_error("a,b,c\n1,2,3\n", wanted)

    assert message == (
        "the model takes 4 features; the file has 3 columns and lacks the columns w, x, y, z"
    )


def test_a_wanted_column_named_twice_is_refused() -> None:
    assert csv_error("a,b,a\n1,2,3\n") == "the file has two columns 'a'"


# --- CSV ----------------------------------------------------------------------------------------


def test_blank_lines_are_skipped_and_rows_counted_after_the_header() -> None:
    blocks = read_all(csv_reader("a,b\n\n1,2\n\r\n3,4\n"))

    assert [block.first_row for block in blocks] == [1]
    assert blocks[0].values.tolist() == [[2.0, 1.0], [4.0, 3.0]]
    assert list(blocks[0].lines or []) == [3, 5]


def test_quoted_values_may_hold_commas_quotes_and_line_breaks() -> None:
    text = 'a,b,note\n1,2,"x, ""y"""\n3,4,"two\nlines"\n5,6,plain\n'

    assert values(csv_reader(text)) == [[2.0, 1.0], [4.0, 3.0], [6.0, 5.0]]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_every_line_ending_reads_the_same(newline: str) -> None:
    text = newline.join(["a,b", "1,2", "3,4", ""])

    assert values(csv_reader(text)) == [[2.0, 1.0], [4.0, 3.0]]


def test_a_byte_order_mark_and_a_last_line_without_newline_are_fine() -> None:
    assert values(csv_reader("\ufeffa,b\n1,2".encode())) == [[2.0, 1.0]]


def test_empty_cells_are_missing_and_boolean_columns_take_words() -> None:
    wanted = Wanted(names=("a", "b"), kinds=(Kind.NUMBER, Kind.BOOL))

    rows = values(csv_reader("a,b\n,true\n 2 ,No\n3,1\n", wanted))

    assert np.isnan(rows[0][0])
    assert rows[0][1:] + rows[1] + rows[2] == [1.0, 2.0, 0.0, 3.0, 1.0]


def test_a_narrow_file_reads_the_same_in_bulk_as_line_by_line() -> None:
    # The bulk path reads whole buffers of plain lines; a quoted line, a blank one and CRLF
    # endings send some through the line-by-line path. Both must agree with the csv module.
    rng = np.random.default_rng(3)
    lines = ["a,b,c"]
    for i in range(5_000):
        x, y, z = rng.normal(size=3).round(4)
        lines.append(f'"{x}",{y},{z}' if i % 997 == 0 else f"{x},{y},{z}")
        if i % 1_501 == 0:
            lines.append("")
    text = "\r\n".join(lines) + "\r\n"
    records = [r for r in csv.reader(io.StringIO(text, newline="")) if r][1:]
    expected = [[float(r[2]), float(r[0])] for r in records]

    got = values(csv_reader(text, Wanted(names=("c", "a")), block_cells=1_000))

    assert got == expected


def test_a_wide_file_keeps_only_its_columns_in_blocks_bounded_by_cells(tmp_path: Path) -> None:
    path = write_wide_csv(tmp_path / "wide.csv", columns=300, rows=500, kept=IRIS)
    limits = TabularLimits(block_cells=1_000)
    expected = np.loadtxt(path, delimiter=",", skiprows=1)[:, -4:]

    with path.open("rb", buffering=0) as raw:
        blocks = read_all(CsvReader(raw, Wanted(names=IRIS), limits, what=WHAT))

    assert all(block.values.shape == (block.rows, 4) for block in blocks)
    assert max(block.values.size for block in blocks) <= limits.block_cells
    assert np.array_equal(np.vstack([b.values for b in blocks]), expected)


def test_read_hands_out_at_most_the_rows_asked_for() -> None:
    reader = csv_reader("a,b\n" + "1,2\n" * 10)

    sizes = [block.rows for block in iter(lambda: reader.read(3), None)]

    assert sizes == [3, 3, 3, 1]


def test_skip_passes_over_rows_and_numbering_goes_on() -> None:
    reader = csv_reader("a,b\n1,2\n3,4\n5,6\n")

    reader.skip(2)
    block = reader.read(10)

    assert block is not None
    assert (block.first_row, block.values.tolist()) == (3, [[6.0, 5.0]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"a,b\n1,2\n3,{SECRET}\n", "row 2 (line 3), column 'b': not a number"),
        (f'a,b\n1,2\n"{SECRET}",4\n', "row 2 (line 3), column 'a': not a number"),
        (f"a,b\n1,2\n\n{SECRET}\n", "row 2 (line 4) has 1 fields; the header has 2"),
        (f'a,b\n1,"{SECRET}",3\n', "row 1 (line 2) has 3 fields; the header has 2"),
    ],
    ids=["not-a-number", "quoted-not-a-number", "ragged", "quoted-ragged"],
)
def test_errors_name_the_row_line_and_column_never_the_value(text: str, message: str) -> None:
    assert csv_error(text) == message


def test_a_file_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(TabularError, match="the file is not UTF-8 text"):
        read_all(csv_reader(b"a,b\n1,\xff\n"))


def test_an_empty_file_has_no_header() -> None:
    assert csv_error("") == "the file is empty: a CSV file starts with a header row"


def test_a_header_wider_than_the_limit_is_refused() -> None:
    header = ",".join(f"c{i}" for i in range(101))

    assert (
        csv_error(header + "\n", max_columns=100)
        == "the file has 101 columns; at most 100 are read"
    )


@pytest.mark.parametrize(
    "text",
    ["a,b\n1," + "2" * 2_000 + "\n", 'a,b\n1,"' + "2\n" * 1_000 + '"\n'],
    ids=["one-line", "quoted-lines"],
)
def test_a_row_longer_than_the_limit_is_refused(text: str) -> None:
    assert csv_error(text, max_line_chars=1_024) == "line 2 is longer than 1024 characters"


def test_rows_past_the_limit_are_refused() -> None:
    message = csv_error("a,b\n" + "1,2\n" * 11, max_rows=10)

    assert message == "the file has more than 10 data rows, the most this server reads"


# --- Parquet ------------------------------------------------------------------------------------


def open_parquet(path: Path, wanted: Wanted = BY_NAME, **limits: int) -> ParquetReader:
    return ParquetReader(path, wanted, TabularLimits(**limits), what=WHAT)


def test_parquet_numeric_types_read_as_float_and_nulls_as_missing(tmp_path: Path) -> None:
    path = parquet_file(
        tmp_path,
        {
            "a": pa.array([1, None, 3], pa.int32()),
            "b": pa.array([True, False, None]),
            "c": pa.array([decimal.Decimal("1.25")] * 3, pa.decimal128(5, 2)),
            "s": ["x", "y", "z"],
        },
    )

    rows = values(open_parquet(path, Wanted(names=("a", "b", "c"))))

    assert np.array_equal(
        np.array(rows), np.array([[1, 1, 1.25], [np.nan, 0, 1.25], [3, np.nan, 1.25]]), True
    )


def test_parquet_reads_across_row_groups_in_bounded_batches_and_skips(tmp_path: Path) -> None:
    a = np.arange(100, dtype=np.float64)
    path = parquet_file(tmp_path, {"a": a, "b": -a}, row_group_size=30)
    reader = open_parquet(path, block_cells=20)

    reader.skip(45)
    blocks = read_all(reader)

    assert reader.rows_total == 100
    assert max(block.values.size for block in blocks) <= 20
    assert blocks[0].first_row == 46
    assert np.vstack([b.values for b in blocks]).tolist() == [[-x, x] for x in a[45:]]


def test_a_non_numeric_parquet_column_is_refused_from_its_schema(tmp_path: Path) -> None:
    path = parquet_file(tmp_path, {"a": [1.0], "b": [SECRET]})

    with pytest.raises(TabularError) as caught:
        open_parquet(path)

    assert caught.value.message == "column 'b' is not numeric (string)"


def test_parquet_rows_past_the_limit_are_refused_before_any_row_is_read(tmp_path: Path) -> None:
    path = write_constant_parquet(tmp_path / "big.parquet", rows=50_000, names=("a", "b"))
    # Garble every byte between the leading magic and the footer: the pages cannot be read,
    # so only a check of the footer alone can answer.
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[4 : len(data) - 8 - footer] = b"\xff" * (len(data) - 12 - footer)
    path.write_bytes(bytes(data))

    with pytest.raises(TabularError) as caught:
        open_parquet(path, max_rows=10_000)

    assert caught.value.message == (
        "the file has 50000 data rows, more than the 10000 this server reads"
    )


def test_a_parquet_file_wider_than_the_limit_is_refused(tmp_path: Path) -> None:
    path = parquet_file(tmp_path, {f"c{i}": [1.0] for i in range(11)})

    with pytest.raises(TabularError, match="has 11 columns; at most 10 are read"):
        open_parquet(path, Wanted(names=("c0",)), max_columns=10)


def test_a_row_group_declaring_more_bytes_than_its_numbers_take_is_refused() -> None:
    # pyarrow writes honest sizes; a crafted footer is what the check is for.
    column = SimpleNamespace(total_uncompressed_size=10**12)
    group = SimpleNamespace(num_rows=1_000, column=lambda j: column)
    metadata = SimpleNamespace(
        num_columns=1,
        num_rows=1_000,
        num_row_groups=1,
        schema=SimpleNamespace(column=lambda j: SimpleNamespace(path="a")),
        row_group=lambda g: group,
    )

    with pytest.raises(TabularError) as caught:
        tabular._check_row_groups(metadata, ["a"], ["'a'"], WHAT)

    assert caught.value.message == (
        "row group 1 of the file declares more bytes for column 'a' than its 1000 numbers can take"
    )


@pytest.mark.parametrize(
    "data",
    [b"a,b\n1,2\n", b"PAR1" + b"\0" * 64 + b"PAR1", b"PAR1"],
    ids=["csv", "garbage-footer", "magic-only"],
)
def test_a_file_that_is_not_parquet_is_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(data)

    with pytest.raises(TabularError, match=r"^the file is not a readable Parquet file$"):
        open_parquet(path)
