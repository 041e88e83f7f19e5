"""Format detection from the bytes of each legit file, and refusal of anything else."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from modelyard.serving.formats import (
    FRAMEWORK_OF,
    PICKLE_FORMATS,
    Framework,
    ModelFormat,
    UnsupportedModelFormat,
    detect_format,
)
from tests.serving import legit


@pytest.mark.parametrize("case", legit.LEGIT_FILES, ids=lambda case: case.name)
def test_detect_format_reads_the_bytes(
    case: legit.LegitCase, legit_files: dict[str, Path], tmp_path: Path
) -> None:
    renamed = tmp_path / "upload.bin"
    renamed.write_bytes(legit_files[case.name].read_bytes())
    assert detect_format(renamed) is case.format
    assert FRAMEWORK_OF[case.format] is case.framework


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world", b"\x80", b"{}", b'{"name": "x"}', b"tree\n", b"\x00" * 64],
    ids=["empty", "text", "lone-proto", "empty-json", "other-json", "lgb-head", "zeros"],
)
def test_detect_format_refuses_junk(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.joblib"
    path.write_bytes(content)
    with pytest.raises(UnsupportedModelFormat) as info:
        detect_format(path)
    assert info.value.status == 415
    assert info.value.type == "unsupported-model-format"


def test_detect_format_refuses_a_zip_without_schema(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data.txt", "hello")
    with pytest.raises(UnsupportedModelFormat):
        detect_format(path)


def test_format_tables_cover_every_format() -> None:
    assert set(FRAMEWORK_OF) == set(ModelFormat)
    assert set(FRAMEWORK_OF.values()) == set(Framework)
    assert {ModelFormat.JOBLIB, ModelFormat.PICKLE} == PICKLE_FORMATS
