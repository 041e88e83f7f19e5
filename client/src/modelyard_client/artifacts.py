"""Estimators to model files (`log_model`) and model files back to Python (`load_model`).

Files are written in safe formats only: skops for scikit-learn, the native formats of ONNX,
XGBoost and LightGBM, ONNX exports for PyTorch and Keras. Loading goes through the same restrictions as the server: skops with the
server's list of trusted types, never plain pickle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from modelyard_client import exporters
from modelyard_client.errors import ConfigurationError, InvalidInput

# Equal to modelyard.serving.loader.SKOPS_TRUSTED (a test keeps them equal): the classes that
# scikit-learn models are made of, and nothing that can reach the file system or run code.
SKOPS_TRUSTED: Final[tuple[str, ...]] = (
    "numpy.random._generator.Generator",
    "numpy.random._mt19937.MT19937",
    "numpy.random._pcg64.PCG64",
    "numpy.random._pcg64.PCG64DXSM",
    "numpy.random._philox.Philox",
    "numpy.random._sfc64.SFC64",
    "numpy.random.bit_generator.SeedSequence",
    "numpy.random.mtrand.RandomState",
    "sklearn._loss._loss.CyAbsoluteError",
    "sklearn._loss._loss.CyExponentialLoss",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn._loss._loss.CyHalfGammaLoss",
    "sklearn._loss._loss.CyHalfMultinomialLoss",
    "sklearn._loss._loss.CyHalfPoissonLoss",
    "sklearn._loss._loss.CyHalfSquaredError",
    "sklearn._loss._loss.CyHalfTweedieLoss",
    "sklearn._loss._loss.CyHalfTweedieLossIdentity",
    "sklearn._loss._loss.CyHuberLoss",
    "sklearn._loss._loss.CyPinballLoss",
    "sklearn._loss.link.HalfLogitLink",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.loss.AbsoluteError",
    "sklearn._loss.loss.ExponentialLoss",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfGammaLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.HalfPoissonLoss",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss.loss.HalfTweedieLoss",
    "sklearn._loss.loss.HalfTweedieLossIdentity",
    "sklearn._loss.loss.HuberLoss",
    "sklearn._loss.loss.PinballLoss",
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.cluster._kmeans.KMeans",
    "sklearn.cluster._kmeans.MiniBatchKMeans",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.compose._target.TransformedTargetRegressor",
    "sklearn.decomposition._pca.PCA",
    "sklearn.decomposition._truncated_svd.TruncatedSVD",
    "sklearn.discriminant_analysis.LinearDiscriminantAnalysis",
    "sklearn.discriminant_analysis.QuadraticDiscriminantAnalysis",
    "sklearn.dummy.DummyClassifier",
    "sklearn.dummy.DummyRegressor",
    "sklearn.ensemble._bagging.BaggingClassifier",
    "sklearn.ensemble._bagging.BaggingRegressor",
    "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.ensemble._forest.ExtraTreesRegressor",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn.ensemble._gb.GradientBoostingRegressor",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._iforest.IsolationForest",
    "sklearn.ensemble._stacking.StackingClassifier",
    "sklearn.ensemble._stacking.StackingRegressor",
    "sklearn.ensemble._voting.VotingClassifier",
    "sklearn.ensemble._voting.VotingRegressor",
    "sklearn.ensemble._weight_boosting.AdaBoostClassifier",
    "sklearn.ensemble._weight_boosting.AdaBoostRegressor",
    "sklearn.feature_selection._univariate_selection.SelectKBest",
    "sklearn.feature_selection._variance_threshold.VarianceThreshold",
    "sklearn.impute._base.MissingIndicator",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.isotonic.IsotonicRegression",
    "sklearn.linear_model._base.LinearRegression",
    "sklearn.linear_model._bayes.ARDRegression",
    "sklearn.linear_model._bayes.BayesianRidge",
    "sklearn.linear_model._coordinate_descent.ElasticNet",
    "sklearn.linear_model._coordinate_descent.ElasticNetCV",
    "sklearn.linear_model._coordinate_descent.Lasso",
    "sklearn.linear_model._coordinate_descent.LassoCV",
    "sklearn.linear_model._coordinate_descent.MultiTaskElasticNet",
    "sklearn.linear_model._coordinate_descent.MultiTaskLasso",
    "sklearn.linear_model._glm.glm.GammaRegressor",
    "sklearn.linear_model._glm.glm.PoissonRegressor",
    "sklearn.linear_model._glm.glm.TweedieRegressor",
    "sklearn.linear_model._huber.HuberRegressor",
    "sklearn.linear_model._least_angle.Lars",
    "sklearn.linear_model._least_angle.LassoLars",
    "sklearn.linear_model._least_angle.LassoLarsIC",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._logistic.LogisticRegressionCV",
    "sklearn.linear_model._passive_aggressive.PassiveAggressiveClassifier",
    "sklearn.linear_model._passive_aggressive.PassiveAggressiveRegressor",
    "sklearn.linear_model._perceptron.Perceptron",
    "sklearn.linear_model._quantile.QuantileRegressor",
    "sklearn.linear_model._ridge.Ridge",
    "sklearn.linear_model._ridge.RidgeCV",
    "sklearn.linear_model._ridge.RidgeClassifier",
    "sklearn.linear_model._ridge.RidgeClassifierCV",
    "sklearn.linear_model._sgd_fast.EpsilonInsensitive",
    "sklearn.linear_model._sgd_fast.Hinge",
    "sklearn.linear_model._sgd_fast.Huber",
    "sklearn.linear_model._sgd_fast.Log",
    "sklearn.linear_model._sgd_fast.ModifiedHuber",
    "sklearn.linear_model._sgd_fast.SquaredEpsilonInsensitive",
    "sklearn.linear_model._sgd_fast.SquaredHinge",
    "sklearn.linear_model._sgd_fast.SquaredLoss",
    "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn.linear_model._stochastic_gradient.SGDRegressor",
    "sklearn.metrics._dist_metrics.ChebyshevDistance64",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
    "sklearn.multiclass.OneVsOneClassifier",
    "sklearn.multiclass.OneVsRestClassifier",
    "sklearn.naive_bayes.BernoulliNB",
    "sklearn.naive_bayes.CategoricalNB",
    "sklearn.naive_bayes.ComplementNB",
    "sklearn.naive_bayes.GaussianNB",
    "sklearn.naive_bayes.MultinomialNB",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.neighbors._classification.RadiusNeighborsClassifier",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._nearest_centroid.NearestCentroid",
    "sklearn.neighbors._regression.KNeighborsRegressor",
    "sklearn.neighbors._regression.RadiusNeighborsRegressor",
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    "sklearn.neural_network._multilayer_perceptron.MLPRegressor",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.pipeline.FeatureUnion",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.Binarizer",
    "sklearn.preprocessing._data.MaxAbsScaler",
    "sklearn.preprocessing._data.MinMaxScaler",
    "sklearn.preprocessing._data.Normalizer",
    "sklearn.preprocessing._data.PowerTransformer",
    "sklearn.preprocessing._data.QuantileTransformer",
    "sklearn.preprocessing._data.RobustScaler",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._discretization.KBinsDiscretizer",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.preprocessing._encoders.OrdinalEncoder",
    "sklearn.preprocessing._label.LabelBinarizer",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.preprocessing._polynomial.PolynomialFeatures",
    "sklearn.preprocessing._polynomial.SplineTransformer",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.svm._classes.LinearSVR",
    "sklearn.svm._classes.NuSVC",
    "sklearn.svm._classes.NuSVR",
    "sklearn.svm._classes.OneClassSVM",
    "sklearn.svm._classes.SVC",
    "sklearn.svm._classes.SVR",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._classes.ExtraTreeClassifier",
    "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.tree._tree.Tree",
    "sklearn.utils._bunch.Bunch",
)
_SAFE_FORMATS: Final = frozenset({"skops", "onnx", "xgboost-json", "xgboost-ubj", "lightgbm-text"})


@dataclass(frozen=True, slots=True)
class SavedModel:
    path: Path
    framework: str
    input_schema: dict[str, Any] | None
    metadata: dict[str, Any] | None = None


def _missing(package: str, extra: str | None = "ml") -> ConfigurationError:
    """The error for a missing optional package, naming the extra that brings it, if one does."""
    if extra is None:
        return ConfigurationError(f"{package} is not installed: pip install {package}")
    return ConfigurationError(
        f"{package} is not installed: pip install 'modelyard-client[{extra}]' (or {package})"
    )


def save_model(
    estimator: Any,
    folder: Path,
    input_example: Any = None,
    *,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    tolerance: float = exporters.DEFAULT_TOLERANCE,
) -> SavedModel:
    """Write `estimator` into `folder` in its safe format; infer the schema from the example.

    Accepts a scikit-learn estimator (skops), an ONNX ModelProto, an XGBoost or LightGBM
    booster or scikit-learn wrapper (native format), a PyTorch module or a Keras model (their
    ONNX export, checked against the model on `input_example`: see `modelyard_client.exporters`),
    or a path to a model file.
    """
    if exporters.is_torch_module(estimator):
        exported = exporters.export_torch(
            estimator, input_example, folder, dynamic_axes=dynamic_axes, tolerance=tolerance
        )
        return SavedModel(exported.path, exported.framework, None, exported.metadata)
    if exporters.is_keras_model(estimator):
        if dynamic_axes:
            raise ConfigurationError(
                "dynamic_axes is for PyTorch modules: a Keras model's dimensions are dynamic "
                "where its inputs declare None"
            )
        exported = exporters.export_keras(estimator, input_example, folder, tolerance=tolerance)
        return SavedModel(exported.path, exported.framework, None, exported.metadata)
    schema = infer_input_schema(input_example) if input_example is not None else None
    if isinstance(estimator, str | os.PathLike):
        path = Path(estimator)
        if not path.is_file():
            raise InvalidInput(f"no model file at {path}")
        return SavedModel(path, "", schema)
    module = type(estimator).__module__.split(".")[0]
    if module == "onnx":
        path = folder / "model.onnx"
        path.write_bytes(estimator.SerializeToString())
        return SavedModel(path, "onnx", schema)
    if module == "xgboost":
        booster = estimator.get_booster() if hasattr(estimator, "get_booster") else estimator
        path = folder / "model.json"
        booster.save_model(str(path))
        return SavedModel(path, "xgboost", schema)
    if module == "lightgbm":
        booster = getattr(estimator, "booster_", estimator)
        path = folder / "model.txt"
        booster.save_model(str(path))
        return SavedModel(path, "lightgbm", schema)
    if hasattr(estimator, "fit") and hasattr(estimator, "get_params"):
        try:
            import skops.io as sio
        except ImportError as exc:
            raise _missing("skops") from exc
        path = folder / "model.skops"
        sio.dump(estimator, path)
        return SavedModel(path, "sklearn", schema)
    raise InvalidInput(
        f"cannot log a {type(estimator).__name__}: give a scikit-learn estimator, an ONNX "
        "model, an XGBoost or LightGBM booster, a PyTorch module, a Keras model, or a model "
        "file's path"
    )


_KINDS: Final = {"f": "float", "i": "int", "u": "int", "b": "bool", "O": "str", "U": "str"}


def infer_input_schema(example: Any) -> dict[str, Any] | None:
    """Describe the features of an input example: a DataFrame's columns by name and dtype, or
    f0, f1, ... (the server's names for unnamed features) for arrays and rows."""
    module = type(example).__module__.split(".")[0]
    if module == "pandas" and hasattr(example, "dtypes"):
        return {
            "features": [
                {"name": str(name), "type": _KINDS.get(dtype.kind, "float")}
                for name, dtype in example.dtypes.items()
            ]
        }
    if module == "numpy" and hasattr(example, "shape"):
        width = example.shape[-1] if example.ndim else 1
        kind = _KINDS.get(example.dtype.kind, "float")
        return {"features": [{"name": f"f{i}", "type": kind} for i in range(width)]}
    rows = example if isinstance(example, list) else None
    if rows and isinstance(rows[0], dict):
        return {"features": [{"name": str(k), "type": _kind_of(v)} for k, v in rows[0].items()]}
    if rows and isinstance(rows[0], list | tuple):
        return {"features": [{"name": f"f{i}", "type": _kind_of(v)} for i, v in enumerate(rows[0])]}
    if rows:
        return {"features": [{"name": f"f{i}", "type": _kind_of(v)} for i, v in enumerate(rows)]}
    return None


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return "str"
    return "float"


def load_model_file(path: Path, fmt: str) -> Any:
    """Load a downloaded model file through the safe loader of its format.

    Raises:
        ConfigurationError: a pickle or joblib file (never loaded on the client), or the
            library the format needs is not installed.
    """
    if fmt not in _SAFE_FORMATS:
        raise ConfigurationError(
            f"the version is stored as {fmt}, which can run code when loaded: the client loads "
            "only skops, ONNX, XGBoost and LightGBM files (download() gets the file itself)"
        )
    if fmt == "skops":
        try:
            import skops.io as sio
        except ImportError as exc:
            raise _missing("skops") from exc
        return sio.load(path, trusted=list(SKOPS_TRUSTED))
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise _missing("onnxruntime", None) from exc
        return ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    if fmt.startswith("xgboost"):
        try:
            import xgboost as xgb
        except ImportError as exc:
            raise _missing("xgboost", None) from exc
        booster = xgb.Booster()
        booster.load_model(bytearray(path.read_bytes()))
        return booster
    try:
        import lightgbm as lgb
    except ImportError as exc:
        raise _missing("lightgbm", None) from exc
    return lgb.Booster(model_str=path.read_text())
