"""Fixtures for the serving tests: legit model files built once, and a shared prober."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from modelyard.serving.probe import ModelProber
from tests.serving import legit
from tests.support.settings import PROBE_SOCKET

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


@pytest.fixture(scope="session")
def dl_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """Export a test network (tests/serving/dl_models.py) by an exporter, once per run."""
    from tests.serving import dl_models

    folder = tmp_path_factory.mktemp("dl")
    exported: dict[tuple[str, str], Path] = {}

    def export(name: str, exporter: str) -> Path:
        if (name, exporter) not in exported:
            network = dl_models.NETWORKS[name]
            path = folder / f"{name}-{exporter}.onnx"
            exported[name, exporter] = dl_models.export(network, exporter, path)
        return exported[name, exporter]

    return export
