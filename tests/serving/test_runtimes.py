"""Runtimes: every legit format predicts like its reference model; bad bytes never load."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pytest
import xgboost as xgb

from modelyard.artifacts import ArtifactStore
from modelyard.observability.metrics import Metrics
from modelyard.serving.formats import Framework, ModelFormat, ModelRejected, detect_format
from modelyard.serving.runtimes import (
    ArtifactCorrupted,
    Runtime,
    fetch_runtime,
    load_runtime,
)
from modelyard.serving.runtimes.base import InferenceLimitExceeded
from modelyard.serving.runtimes.onnx import DEFAULT_MEMORY_BYTES, cap_onnx_memory
from tests.serving import hostile, legit

# The fitted estimator each sklearn case was written from (longest prefix first).
SKLEARN_REFERENCES: list[tuple[str, Callable[[], Any]]] = [
    ("lr_species", legit.iris_lr_species),
    ("lr", legit.iris_lr),
    ("pipeline", legit.iris_pipeline),
    ("tree", legit.iris_tree),
    ("forest", legit.iris_forest),
    ("hgb", legit.iris_hgb),
    ("knn_ball", legit.iris_knn_ball),
    ("knn", legit.iris_knn),
    ("gbr", legit.gbr),
    ("ridge", legit.ridge),
]
# Refused by the in-process checks (the ones that crash native code are the probe's business).
REFUSED_AT_LOAD = [
    "os_system",
    "class_poisoning",
    "tree_child_joblib",
    "forest_cycle_skops",
    "hgb_child",
    "knn_index",
    "xgb_json_child",
    "xgb_ubj_feature",
    "lgb_child",
    "onnx_custom_domain",
    "tree_node_twice_skops",
    "forest_shared_deep_tree",
    "onnx_loop",
    "onnx_constant_of_shape",
    "onnx_tile",
    "onnx_range_in_scan",
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load(path: Path, fmt: ModelFormat | None = None) -> Runtime:
    data = path.read_bytes()
    return load_runtime(data, fmt or detect_format(path), sha256=sha(data))


def inputs_for(case: legit.LegitCase) -> npt.NDArray[np.float64]:
    return legit.iris()[0] if case.n_features == 4 else legit.regression_data()[0]


def reference(
    case: legit.LegitCase, path: Path, x: npt.NDArray[Any]
) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
    """Predict with the in-process model the file came from (or its framework's own loader)."""
    if case.framework is Framework.SKLEARN:
        fit = next(f for prefix, f in SKLEARN_REFERENCES if case.name.startswith(prefix))
        model = fit()
        proba = model.predict_proba(x) if case.classes else None
        return model.predict(x), proba
    if case.framework is Framework.ONNX:
        model = legit.iris_lr() if case.classes else legit.ridge()
        x64 = x.astype(np.float64)
        return model.predict(x64), model.predict_proba(x64) if case.classes else None
    if case.framework is Framework.XGBOOST:
        raw = np.asarray(xgb.Booster(model_file=str(path)).predict(xgb.DMatrix(x)))
    else:
        raw = np.asarray(lgb.Booster(model_file=str(path)).predict(x))
    if case.classes:
        return np.asarray(case.classes)[np.argmax(raw, axis=1)], raw
    return raw, None


@pytest.mark.parametrize("case", legit.LEGIT_FILES, ids=lambda case: case.name)
def test_runtime_predicts_like_the_reference_model(
    case: legit.LegitCase, legit_files: dict[str, Path]
) -> None:
    path = legit_files[case.name]
    runtime = load(path, case.format)
    x = inputs_for(case).astype(runtime.input_dtype)

    predictions, probabilities = runtime.predict(x)

    expected, expected_proba = reference(case, path, x)
    assert predictions.shape == (len(x),)
    if case.classes:
        assert predictions.tolist() == expected.tolist()
        assert probabilities is not None
        assert expected_proba is not None
        assert probabilities.shape == (len(x), len(case.classes))
        assert np.allclose(probabilities, expected_proba, atol=1e-5)
        assert np.allclose(probabilities.sum(axis=1), 1.0)
    else:
        assert predictions.dtype.kind == "f"
        assert np.allclose(predictions, expected, rtol=1e-5, atol=1e-5)
        assert probabilities is None


@pytest.mark.parametrize("case", legit.LEGIT_FILES, ids=lambda case: case.name)
def test_runtime_describes_the_model(case: legit.LegitCase, legit_files: dict[str, Path]) -> None:
    runtime = load(legit_files[case.name], case.format)

    assert runtime.framework is case.framework
    assert runtime.format is case.format
    assert runtime.task_type == case.task_type
    assert runtime.n_features == case.n_features
    assert runtime.classes == case.classes
    assert runtime.has_proba is (case.classes is not None)
    assert runtime.feature_names == case.feature_names
    assert runtime.nbytes > legit_files[case.name].stat().st_size


def test_runtime_input_types_follow_the_framework(legit_files: dict[str, Path]) -> None:
    onnx = load(legit_files["onnx_classifier"])
    sklearn = load(legit_files["lr_joblib"])

    assert (onnx.input_dtype, onnx.input_name) == (np.dtype(np.float32), "X")
    assert (sklearn.input_dtype, sklearn.input_name) == (np.dtype(np.float64), "input-0")


def test_string_labels_come_back_as_python_strings(legit_files: dict[str, Path]) -> None:
    runtime = load(legit_files["lr_species_skops"])

    predictions, _ = runtime.predict(legit.iris()[0][:3])

    assert predictions.dtype == object
    assert predictions.tolist() == ["setosa"] * 3


def test_xgboost_binary_classifier_answers_both_class_probabilities(tmp_path: Path) -> None:
    x, y = legit.iris()
    path = tmp_path / "binary.json"
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1).fit(x, (y == 2).astype(int))
    model.save_model(path)
    runtime = load(path)
    x32 = x.astype(np.float32)

    predictions, probabilities = runtime.predict(x32)

    p = xgb.Booster(model_file=str(path)).predict(xgb.DMatrix(x32))
    assert runtime.classes == [0, 1]
    assert probabilities is not None
    assert np.allclose(probabilities, np.column_stack([1 - p, p]))
    assert predictions.tolist() == (p > 0.5).astype(int).tolist()


def test_xgboost_softmax_classifier_answers_labels_only(tmp_path: Path) -> None:
    x, y = legit.iris()
    path = tmp_path / "softmax.json"
    params = {"objective": "multi:softmax", "num_class": 3, "max_depth": 2, "nthread": 1}
    xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=3).save_model(path)
    runtime = load(path)
    x32 = x.astype(np.float32)

    predictions, probabilities = runtime.predict(x32)

    expected = xgb.Booster(model_file=str(path)).predict(xgb.DMatrix(x32)).astype(int)
    assert runtime.has_proba is False
    assert probabilities is None
    assert predictions.tolist() == expected.tolist()


@pytest.mark.parametrize("objective", ["binary", "multiclassova"])
def test_lightgbm_classifier_probabilities_sum_to_one(objective: str, tmp_path: Path) -> None:
    x, y = legit.iris()
    labels = (y == 2).astype(int) if objective == "binary" else y
    params: dict[str, Any] = {"objective": objective, "num_leaves": 4, "verbose": -1}
    if objective != "binary":
        params["num_class"] = 3
    path = tmp_path / f"{objective}.txt"
    lgb.train(params, lgb.Dataset(x, label=labels), num_boost_round=3).save_model(path)
    runtime = load(path)
    x32 = x.astype(np.float32)

    predictions, probabilities = runtime.predict(x32)

    raw = np.asarray(lgb.Booster(model_file=str(path)).predict(x32))
    expected = (raw > 0.5).astype(int) if objective == "binary" else np.argmax(raw, axis=1)
    assert probabilities is not None
    assert probabilities.shape == (len(x), 2 if objective == "binary" else 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert predictions.tolist() == expected.tolist()


def test_wrong_sha256_is_refused_before_loading(legit_files: dict[str, Path]) -> None:
    data = legit_files["lr_joblib"].read_bytes()

    with pytest.raises(ArtifactCorrupted) as info:
        load_runtime(data, ModelFormat.JOBLIB, sha256=sha(data + b"tampered"))

    assert info.value.status == 500
    assert info.value.type == "artifact-corrupted"


def test_flipped_byte_is_refused(legit_files: dict[str, Path]) -> None:
    data = legit_files["xgb_classifier_json"].read_bytes()
    flipped = data[:-2] + bytes([data[-2] ^ 1]) + data[-1:]

    with pytest.raises(ArtifactCorrupted):
        load_runtime(flipped, ModelFormat.XGBOOST_JSON, sha256=sha(data))


@pytest.mark.parametrize("name", REFUSED_AT_LOAD)
def test_hostile_file_is_refused_at_load(name: str, tmp_path: Path) -> None:
    case = hostile.HOSTILE_BY_NAME[name]
    marker = tmp_path / "marker"
    path = case.build(tmp_path, marker)
    data = path.read_bytes()

    with pytest.raises(ModelRejected) as info:
        load_runtime(data, detect_format(path), sha256=sha(data))

    assert case.reason in info.value.detail
    assert not marker.exists()


async def test_fetch_runtime_loads_from_the_store_and_times_it(
    store: ArtifactStore, legit_files: dict[str, Path]
) -> None:
    path = legit_files["forest_skops"]
    await store.put_file("models/m/v1", path)
    metrics = Metrics()

    runtime = await fetch_runtime(
        store,
        key="models/m/v1",
        sha256=sha(path.read_bytes()),
        fmt=ModelFormat.SKOPS,
        metrics=metrics,
    )

    predictions, _ = runtime.predict(legit.iris()[0])
    assert predictions.tolist() == legit.iris_forest().predict(legit.iris()[0]).tolist()
    count = metrics.registry.get_sample_value(
        "modelyard_model_load_duration_seconds_count", {"framework": "sklearn"}
    )
    assert count == 1


async def test_fetch_runtime_refuses_an_object_that_changed_in_the_store(
    store: ArtifactStore, legit_files: dict[str, Path], tmp_path: Path
) -> None:
    original = legit_files["lgb_classifier"].read_bytes()
    swapped = tmp_path / "swapped.txt"
    swapped.write_bytes(legit_files["lgb_regressor"].read_bytes())
    await store.put_file("models/m/v2", swapped)
    metrics = Metrics()

    with pytest.raises(ArtifactCorrupted):
        await fetch_runtime(
            store,
            key="models/m/v2",
            sha256=sha(original),
            fmt=ModelFormat.LIGHTGBM_TEXT,
            metrics=metrics,
        )
    count = metrics.registry.get_sample_value(
        "modelyard_model_load_duration_seconds_count", {"framework": "lightgbm"}
    )
    assert count is None


def test_onnx_run_past_its_time_budget_is_stopped(tmp_path: Path) -> None:
    # One row (the load's description) is ~1e7 sines; 32 rows are 100x that.
    data = hostile.onnx_costly_per_row(tmp_path, repeats=25_000, passes=100).read_bytes()
    runtime = load_runtime(data, ModelFormat.ONNX, sha256=sha(data), run_timeout_seconds=0.01)

    with pytest.raises(InferenceLimitExceeded, match=r"took longer than 0\.01 s"):
        runtime.predict(np.ones((32, 4), dtype=np.float32))


def test_onnx_run_past_the_memory_cap_is_refused(tmp_path: Path) -> None:
    # Each row becomes 4 M floats (16 MiB): one row fits the cap, eight do not.
    data = hostile.onnx_costly_per_row(tmp_path, repeats=1_000_000, passes=0).read_bytes()
    cap_onnx_memory(64 * 1024**2)
    try:
        runtime = load_runtime(data, ModelFormat.ONNX, sha256=sha(data))
        with pytest.raises(InferenceLimitExceeded, match="more memory for these inputs"):
            runtime.predict(np.ones((8, 4), dtype=np.float32))
        predictions, _ = runtime.predict(np.ones((1, 4), dtype=np.float32))
        assert predictions.shape == (1,)
    finally:
        cap_onnx_memory(DEFAULT_MEMORY_BYTES)


def test_onnx_runtime_never_claims_a_shape_bounded_cost(legit_files: dict[str, Path]) -> None:
    assert load(legit_files["onnx_regressor"]).is_cost_bounded_by_shape is False


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lr_skops", True),
        ("tree_joblib", True),
        ("xgb_classifier_json", True),
        ("lgb_classifier", True),
        ("knn_joblib", False),
    ],
)
def test_runtime_says_whether_its_cost_follows_the_input_shape(
    name: str, expected: bool, legit_files: dict[str, Path]
) -> None:
    assert load(legit_files[name]).is_cost_bounded_by_shape is expected


def test_deep_tree_is_never_cheap_enough_for_the_event_loop(tmp_path: Path) -> None:
    # Zeros leave this tree at its root; a row of -1e9 walks all 5,000 nodes of the chain.
    path = legit.write_joblib(hostile.chain_tree(5000), tmp_path / "chain.joblib")
    runtime = load(path)

    assert runtime.is_cost_bounded_by_shape is False
    predictions, _ = runtime.predict(np.array([[0.0], [-1e9]]))
    assert predictions.shape == (2,)
