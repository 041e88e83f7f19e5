"""Fixtures for the serving tests: legit model files built once, and a shared prober."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.serving.probe import ModelProber
from tests.conftest import PROBE_SOCKET
from tests.serving import legit

DEFAULT_MEMORY_BYTES = 2 * 1024**3


@pytest.fixture(scope="session")
def legit_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every legit model file, built once per run."""
    folder = tmp_path_factory.mktemp("legit")
    return {case.name: case.build(folder) for case in legit.LEGIT_FILES}


@pytest.fixture(scope="session")
def prober() -> ModelProber:
    """A prober with the default limits (it holds no event-loop state, so one per run)."""
    return ModelProber(
        timeout_seconds=30,
        memory_limit_bytes=DEFAULT_MEMORY_BYTES,
        allow_pickle=True,
        socket_path=PROBE_SOCKET,
    )
