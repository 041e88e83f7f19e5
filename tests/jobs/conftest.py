"""Batch job tests run an app whose in-process worker polls often and scores in small chunks
(JOB_SETTINGS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.config import Settings
from tests.jobs.helpers import JOB_SETTINGS
from tests.support.settings import make_settings


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, **JOB_SETTINGS)
