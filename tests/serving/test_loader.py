"""In-process restricted loading: legit models load and predict, hostile pickles are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelyard.serving.formats import ModelFormat, ModelRejected, detect_format
from modelyard.serving.loader import ALLOWED_GLOBALS, SKOPS_TRUSTED, load_model
from modelyard.serving.structure import check_structure
from tests.serving import hostile, legit

PICKLE_HOSTILE = [
    case
    for case in hostile.HOSTILE_FILES
    if case.name
    in {*hostile.LIVE_PAYLOADS, "sklearn_testing", "savetxt", "ndarray_wrapper", "class_poisoning"}
]


@pytest.mark.parametrize("case", legit.LEGIT_FILES, ids=lambda case: case.name)
def test_load_model_loads_and_checks_every_legit_file(
    case: legit.LegitCase, legit_files: dict[str, Path]
) -> None:
    model = load_model(legit_files[case.name], case.format)
    check_structure(model)


def test_restricted_load_predicts_like_the_original(legit_files: dict[str, Path]) -> None:
    x, _ = legit.iris()
    for name, fit in [
        ("forest_joblib", legit.iris_forest),
        ("hgb_skops", legit.iris_hgb),
        ("knn_joblib", legit.iris_knn),
    ]:
        model = load_model(legit_files[name], detect_format(legit_files[name]))
        assert np.array_equal(model.predict(x), fit().predict(x))


@pytest.mark.parametrize("case", PICKLE_HOSTILE, ids=lambda case: case.name)
def test_load_model_refuses_hostile_pickle_without_running_it(
    case: hostile.HostileCase, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    path = case.build(tmp_path, marker)
    with pytest.raises(ModelRejected) as info:
        load_model(path, detect_format(path))
    assert case.reason in info.value.detail
    assert not marker.exists()


def test_refused_class_poisoning_leaves_the_class_intact(
    tmp_path: Path, legit_files: dict[str, Path]
) -> None:
    path = hostile.class_poisoning(tmp_path, tmp_path / "marker")
    with pytest.raises(ModelRejected, match="modifies the class"):
        load_model(path, ModelFormat.JOBLIB)
    model = load_model(legit_files["lr_joblib"], ModelFormat.JOBLIB)
    x, y = legit.iris()
    assert (model.predict(x) == y).mean() > 0.9


@pytest.mark.parametrize("name", hostile.LIVE_PAYLOADS)
def test_payload_runs_under_plain_pickle(name: str, tmp_path: Path) -> None:
    """The hostile files are live: unprotected pickle.load runs them (in a throwaway process)."""
    marker = tmp_path / "marker"
    path = hostile.HOSTILE_BY_NAME[name].build(tmp_path, marker)
    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
    subprocess.run(  # noqa: S603 - our own interpreter and a fixed script
        [sys.executable, "-c", code, str(path)], check=False, capture_output=True, timeout=60
    )
    assert marker.exists()


def test_allowlist_has_no_dotted_names_functions_of_concern_or_prefixes() -> None:
    banned_modules = {"os", "posix", "subprocess", "operator", "importlib", "pickle", "runpy"}
    for module, name in ALLOWED_GLOBALS:
        assert "." not in name
        assert module not in banned_modules
        assert (module, name) not in {
            ("builtins", "getattr"),
            ("builtins", "eval"),
            ("builtins", "exec"),
        }
        assert not module.startswith(("numpy.testing", "sklearn.utils._testing"))
    assert ("joblib.numpy_pickle_compat", "NDArrayWrapper") not in ALLOWED_GLOBALS
    assert "sklearn.tree._tree.Tree" in SKOPS_TRUSTED


def test_truncated_pickle_is_refused(tmp_path: Path, legit_files: dict[str, Path]) -> None:
    path = tmp_path / "cut.pkl"
    path.write_bytes(legit_files["lr_pickle"].read_bytes()[:200])
    with pytest.raises(ModelRejected, match="could not be unpickled"):
        load_model(path, ModelFormat.PICKLE)
