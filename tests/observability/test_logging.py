"""The process log's format by environment, and library warnings as its records."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.config import Settings
from modelyard.observability.logging import configure_logging
from tests.support.settings import make_settings


@pytest.fixture
def restore_logging() -> Iterator[None]:
    # As in a new process: an app an earlier test started captured warnings already, and pytest
    # has since put its own `showwarning` back, which a second captureWarnings(True) keeps.
    logging.captureWarnings(False)
    yield
    logging.captureWarnings(False)
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "modelyard", False)]


def settings_for(tmp_path: Path, **values: object) -> Settings:
    return make_settings(tmp_path, "sqlite:///unused.db", **values)


@pytest.mark.parametrize(
    ("values", "lines"),
    [
        ({"log_format": None}, "console"),
        ({"log_format": None, "env": "production", "secret_key": "x" * 64}, "json"),
        ({"log_format": "json"}, "json"),
        ({"log_format": "console", "env": "production", "secret_key": "x" * 64}, "console"),
    ],
)
def test_text_for_people_in_development_json_in_production_unless_set(
    tmp_path: Path, values: dict[str, object], lines: str
) -> None:
    assert settings_for(tmp_path, **values).log_lines == lines


@pytest.mark.usefixtures("restore_logging")
def test_a_library_warning_is_a_record_in_the_logs_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(settings_for(tmp_path, log_format="json"))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)

    entries = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [entry] = [e for e in entries if e["logger"] == "py.warnings"]
    assert entry["level"] == "warning"
    assert "UserWarning: a library's warning" in entry["event"]
