"""Builders of legitimate model files, one per format and common estimator, for tests."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.ensemble import (
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from modelyard.serving.formats import Framework, ModelFormat

IRIS_CLASSES = [0, 1, 2]
IRIS_SPECIES = ["setosa", "versicolor", "virginica"]


@cache
def iris() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Return the iris features and integer labels (cached: several builders share them)."""
    x, y = load_iris(return_X_y=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)


def regression_data() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Return a tiny deterministic regression problem with 5 features."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    return x, x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1 * rng.normal(size=60)


def iris_lr() -> LogisticRegression:
    """Return a logistic regression fit on iris."""
    x, y = iris()
    return LogisticRegression(max_iter=300).fit(x, y)


def iris_lr_species() -> LogisticRegression:
    """Return a logistic regression whose classes are strings (an object-dtype classes_)."""
    x, y = iris()
    return LogisticRegression(max_iter=300).fit(x, np.array(IRIS_SPECIES, dtype=object)[y])


def iris_pipeline() -> Pipeline:
    """Return StandardScaler then LogisticRegression fit on iris."""
    x, y = iris()
    return Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=300))]).fit(
        x, y
    )


def iris_tree() -> DecisionTreeClassifier:
    """Return a small decision tree fit on iris."""
    x, y = iris()
    return DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y)


def iris_forest() -> RandomForestClassifier:
    """Return a small random forest fit on iris."""
    x, y = iris()
    return RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(x, y)


def iris_hgb() -> HistGradientBoostingClassifier:
    """Return a small HistGradientBoosting classifier fit on iris."""
    x, y = iris()
    return HistGradientBoostingClassifier(max_iter=3, max_leaf_nodes=4, random_state=0).fit(x, y)


def iris_knn() -> KNeighborsClassifier:
    """Return a KNN classifier with a KD-tree index."""
    x, y = iris()
    return KNeighborsClassifier(n_neighbors=3, algorithm="kd_tree").fit(x, y)


def iris_knn_ball() -> KNeighborsClassifier:
    """Return a KNN classifier with a ball-tree index."""
    x, y = iris()
    return KNeighborsClassifier(n_neighbors=3, algorithm="ball_tree").fit(x, y)


def gbr() -> GradientBoostingRegressor:
    """Return a small gradient boosting regressor."""
    x, y = regression_data()
    return GradientBoostingRegressor(n_estimators=3, max_depth=2, random_state=0).fit(x, y)


def ridge() -> Ridge:
    """Return a ridge regression."""
    x, y = regression_data()
    return Ridge().fit(x, y)


def write_skops(model: Any, path: Path) -> Path:
    """Write a model with skops."""
    sio.dump(model, path)
    return path


def write_joblib(model: Any, path: Path, compress: int | tuple[str, int] = 0) -> Path:
    """Write a model with joblib (optionally compressed)."""
    joblib.dump(model, path, compress=compress)
    return path


def write_pickle(model: Any, path: Path) -> Path:
    """Write a model with the standard pickle module."""
    with path.open("wb") as file:
        pickle.dump(model, file, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def onnx_classifier(folder: Path) -> Path:
    """Write an iris logistic regression converted by skl2onnx (no ZipMap)."""
    from skl2onnx import to_onnx

    model = iris_lr()
    onx = to_onnx(model, iris()[0][:1].astype(np.float32), options={id(model): {"zipmap": False}})
    path = folder / "classifier.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def onnx_regressor(folder: Path) -> Path:
    """Write a ridge regression converted by skl2onnx."""
    from skl2onnx import to_onnx

    path = folder / "regressor.onnx"
    onx = to_onnx(ridge(), regression_data()[0][:1].astype(np.float32))
    path.write_bytes(onx.SerializeToString())
    return path


def xgb_classifier(folder: Path, suffix: str = "json") -> Path:
    """Write a small multi-class XGBoost classifier in JSON or UBJ."""
    import xgboost as xgb

    x, y = iris()
    path = folder / f"xgb_classifier.{suffix}"
    xgb.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1).fit(x, y).save_model(path)
    return path


def xgb_regressor(folder: Path, suffix: str = "json") -> Path:
    """Write a small XGBoost regressor through the Booster API."""
    import xgboost as xgb

    x, y = regression_data()
    booster = xgb.train(
        {"objective": "reg:squarederror", "max_depth": 2, "nthread": 1},
        xgb.DMatrix(x, label=y),
        num_boost_round=3,
    )
    path = folder / f"xgb_regressor.{suffix}"
    booster.save_model(path)
    return path


def lgb_classifier(folder: Path) -> Path:
    """Write a small multi-class LightGBM classifier as text."""
    import lightgbm as lgb

    x, y = iris()
    model = lgb.LGBMClassifier(n_estimators=3, num_leaves=4, verbose=-1, n_jobs=1).fit(x, y)
    path = folder / "lgb_classifier.txt"
    model.booster_.save_model(path)
    return path


def lgb_regressor(folder: Path) -> Path:
    """Write a small LightGBM regressor as text, with feature names."""
    import lightgbm as lgb

    x, y = regression_data()
    names = [f"f{i}" for i in range(x.shape[1])]
    booster = lgb.train(
        {"objective": "regression", "num_leaves": 4, "verbose": -1, "num_threads": 1},
        lgb.Dataset(x, label=y, feature_name=names),
        num_boost_round=3,
    )
    path = folder / "lgb_regressor.txt"
    booster.save_model(path)
    return path


@dataclass(frozen=True)
class LegitCase:
    """A legitimate model file and what a probe must report about it."""

    name: str
    build: Callable[[Path], Path]
    framework: Framework
    format: ModelFormat
    task_type: str
    n_features: int
    classes: list[int | float | str] | None
    feature_names: list[str] | None = None


def _sk(
    name: str,
    fit: Callable[[], Any],
    fmt: ModelFormat,
    task: str,
    n_features: int,
    classes: list[int | float | str] | None,
) -> LegitCase:
    writers: dict[ModelFormat, Callable[[Any, Path], Path]] = {
        ModelFormat.SKOPS: write_skops,
        ModelFormat.JOBLIB: write_joblib,
        ModelFormat.PICKLE: write_pickle,
    }
    suffix = {ModelFormat.SKOPS: "skops", ModelFormat.JOBLIB: "joblib", ModelFormat.PICKLE: "pkl"}

    def build(folder: Path) -> Path:
        return writers[fmt](fit(), folder / f"{name}.{suffix[fmt]}")

    return LegitCase(name, build, Framework.SKLEARN, fmt, task, n_features, classes)


IRIS = list[int | float | str](IRIS_CLASSES)
SPECIES = list[int | float | str](IRIS_SPECIES)
CLS, REG = "classification", "regression"

LEGIT_FILES: list[LegitCase] = [
    _sk("lr_skops", iris_lr, ModelFormat.SKOPS, CLS, 4, IRIS),
    _sk("lr_joblib", iris_lr, ModelFormat.JOBLIB, CLS, 4, IRIS),
    _sk("lr_pickle", iris_lr, ModelFormat.PICKLE, CLS, 4, IRIS),
    _sk("lr_species_joblib", iris_lr_species, ModelFormat.JOBLIB, CLS, 4, SPECIES),
    _sk("lr_species_skops", iris_lr_species, ModelFormat.SKOPS, CLS, 4, SPECIES),
    _sk("pipeline_skops", iris_pipeline, ModelFormat.SKOPS, CLS, 4, IRIS),
    _sk("pipeline_joblib", iris_pipeline, ModelFormat.JOBLIB, CLS, 4, IRIS),
    _sk("tree_joblib", iris_tree, ModelFormat.JOBLIB, CLS, 4, IRIS),
    _sk("forest_skops", iris_forest, ModelFormat.SKOPS, CLS, 4, IRIS),
    _sk("forest_joblib", iris_forest, ModelFormat.JOBLIB, CLS, 4, IRIS),
    _sk("forest_pickle", iris_forest, ModelFormat.PICKLE, CLS, 4, IRIS),
    _sk("hgb_skops", iris_hgb, ModelFormat.SKOPS, CLS, 4, IRIS),
    _sk("hgb_joblib", iris_hgb, ModelFormat.JOBLIB, CLS, 4, IRIS),
    _sk("knn_skops", iris_knn, ModelFormat.SKOPS, CLS, 4, IRIS),
    _sk("knn_joblib", iris_knn, ModelFormat.JOBLIB, CLS, 4, IRIS),
    _sk("knn_ball_pickle", iris_knn_ball, ModelFormat.PICKLE, CLS, 4, IRIS),
    _sk("gbr_skops", gbr, ModelFormat.SKOPS, REG, 5, None),
    _sk("gbr_joblib", gbr, ModelFormat.JOBLIB, REG, 5, None),
    _sk("ridge_skops", ridge, ModelFormat.SKOPS, REG, 5, None),
    _sk("ridge_pickle", ridge, ModelFormat.PICKLE, REG, 5, None),
    LegitCase(
        "lr_joblib_zlib",
        lambda folder: write_joblib(iris_lr(), folder / "lr.joblib.z", compress=("zlib", 3)),
        Framework.SKLEARN,
        ModelFormat.JOBLIB,
        CLS,
        4,
        IRIS,
    ),
    LegitCase(
        "lr_joblib_gzip",
        lambda folder: write_joblib(iris_lr(), folder / "lr.joblib.gz", compress=("gzip", 3)),
        Framework.SKLEARN,
        ModelFormat.JOBLIB,
        CLS,
        4,
        IRIS,
    ),
    LegitCase("onnx_classifier", onnx_classifier, Framework.ONNX, ModelFormat.ONNX, CLS, 4, IRIS),
    LegitCase("onnx_regressor", onnx_regressor, Framework.ONNX, ModelFormat.ONNX, REG, 5, None),
    LegitCase(
        "xgb_classifier_json",
        xgb_classifier,
        Framework.XGBOOST,
        ModelFormat.XGBOOST_JSON,
        CLS,
        4,
        IRIS,
    ),
    LegitCase(
        "xgb_classifier_ubj",
        lambda folder: xgb_classifier(folder, "ubj"),
        Framework.XGBOOST,
        ModelFormat.XGBOOST_UBJ,
        CLS,
        4,
        IRIS,
    ),
    LegitCase(
        "xgb_regressor_json",
        xgb_regressor,
        Framework.XGBOOST,
        ModelFormat.XGBOOST_JSON,
        REG,
        5,
        None,
    ),
    LegitCase(
        "xgb_regressor_ubj",
        lambda folder: xgb_regressor(folder, "ubj"),
        Framework.XGBOOST,
        ModelFormat.XGBOOST_UBJ,
        REG,
        5,
        None,
    ),
    LegitCase(
        "lgb_classifier",
        lgb_classifier,
        Framework.LIGHTGBM,
        ModelFormat.LIGHTGBM_TEXT,
        CLS,
        4,
        IRIS,
    ),
    LegitCase(
        "lgb_regressor",
        lgb_regressor,
        Framework.LIGHTGBM,
        ModelFormat.LIGHTGBM_TEXT,
        REG,
        5,
        None,
        feature_names=[f"f{i}" for i in range(5)],
    ),
]
LEGIT_BY_NAME = {case.name: case for case in LEGIT_FILES}

# A function giving the path of a built legitimate model file by case name (fixture `model_file`).
ModelFile = Callable[[str], Path]
