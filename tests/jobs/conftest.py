"""Batch job tests: the in-process worker polls often and scores in small chunks, so a small
file still goes through several chunks, parts and progress commits."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.config import Settings
from tests.conftest import make_settings

CHUNK_ROWS = 7
JOB_SETTINGS: dict[str, object] = {
    "batch_job_chunk_rows": CHUNK_ROWS,
    "batch_job_poll_seconds": 0.05,
    "prediction_log_flush_ms": 10,
}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, **JOB_SETTINGS)
