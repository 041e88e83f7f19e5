"""Files API tests run on both storage backends (and both databases)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.config import Settings
from tests.support.settings import make_settings


@pytest.fixture
def settings(tmp_path: Path, database_url: str, storage_settings: dict[str, object]) -> Settings:
    return make_settings(tmp_path, database_url, **storage_settings)
