"""Path rules of the files area."""

from __future__ import annotations

import pytest

from modelyard.files.service import InvalidPath, default_path, validate_path, validate_prefix


@pytest.mark.parametrize(
    "path",
    ["a.txt", "reports/2026/q1.csv", "%2e%2e%2fx", "..hidden", "été/ü.bin", "a b", "x" * 1024],
)
def test_ordinary_paths_are_kept_as_given(path: str) -> None:
    assert validate_path(path) == path


@pytest.mark.parametrize(
    "path",
    ["", "/etc/passwd", "C:\\x", "C:/x", "..", "../x", "a/../b", "a/..", ".", "./a", "a/./b",
     "a//b", "a/", "a\\b", "a\x00b", "a\nb", "a\x7fb", "x" * 1025, "é" * 513],
)  # fmt: skip
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidPath):
        validate_path(path)


@pytest.mark.parametrize("prefix", ["", "rep", "reports/", "reports/20", "a/b/"])
def test_partial_prefixes_are_accepted(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "/abs", "../", "..", "a//", "a/../", "a\\", "\x00"])
def test_unsafe_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(InvalidPath):
        validate_prefix(prefix)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [("report.csv", "report.csv"), ("C:\\Users\\ada\\r.csv", "r.csv"), ("a/b/c.txt", "c.txt")],
)
def test_default_path_is_the_file_name_without_folders(filename: str, expected: str) -> None:
    assert default_path(filename) == expected
