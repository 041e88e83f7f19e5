"""Model files for registry tests, built once per run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.serving import legit

ModelFile = Callable[[str], Path]


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> ModelFile:
    """Return a function giving the path of a legitimate model file by case name (cached)."""
    folder = tmp_path_factory.mktemp("models")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            case_folder = folder / name
            case_folder.mkdir()
            built[name] = legit.LEGIT_BY_NAME[name].build(case_folder)
        return built[name]

    return get


@pytest.fixture
def iris_skops(model_file: ModelFile) -> Path:
    return model_file("lr_skops")


@pytest.fixture
def iris_bytes(iris_skops: Path) -> bytes:
    return iris_skops.read_bytes()
