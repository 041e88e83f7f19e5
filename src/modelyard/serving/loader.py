"""Restricted, in-process loading of model files: the allowlist unpickler and per-format loaders.

Loading is only safe together with the child-process probe (modelyard.serving.probe): these
checks stop code execution and known crashes, the child process contains whatever slips past.
"""

from __future__ import annotations

import importlib
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np
from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler
from joblib.numpy_pickle_utils import _detect_compressor, _validate_fileobject_and_memmap

from modelyard.serving.formats import ModelFormat, ModelRejected, UnsupportedModelFormat
from modelyard.serving.onnx_graph import check_onnx_graph
from modelyard.serving.precheck import DEFAULT_MAX_EXPANDED_BYTES, check_zip_bounds
from modelyard.serving.probehost import keep_array_backends_out
from modelyard.serving.structure import StructureCost, check_lightgbm_text, check_structure

# Every global a joblib or pickle upload may name: exact (module, qualname) pairs, no prefixes
# (docs/architecture/security-notes.md, items 1-2). Derived by recording the find_class calls made while loading ~45
# fitted estimators (linear, SVM, trees and ensembles, neighbours, naive Bayes, preprocessing,
# pipelines, calibration, MLP, clustering) dumped with joblib and pickle protocol 5, then adding
# the sibling classes of the same modules that models are made of. Only classes and the
# reconstruction helpers numpy, scipy and Cython emit; no function that can reach the file
# system, the interpreter or attributes (no getattr, operator, eval, savetxt).
_ESTIMATORS: Final[dict[str, tuple[str, ...]]] = {
    "sklearn.linear_model._base": ("LinearRegression",),
    "sklearn.linear_model._bayes": ("BayesianRidge", "ARDRegression"),
    "sklearn.linear_model._coordinate_descent": (
        "Lasso",
        "ElasticNet",
        "LassoCV",
        "ElasticNetCV",
        "MultiTaskLasso",
        "MultiTaskElasticNet",
    ),
    "sklearn.linear_model._huber": ("HuberRegressor",),
    "sklearn.linear_model._least_angle": ("Lars", "LassoLars", "LassoLarsIC"),
    "sklearn.linear_model._logistic": ("LogisticRegression", "LogisticRegressionCV"),
    "sklearn.linear_model._passive_aggressive": (
        "PassiveAggressiveClassifier",
        "PassiveAggressiveRegressor",
    ),
    "sklearn.linear_model._perceptron": ("Perceptron",),
    "sklearn.linear_model._quantile": ("QuantileRegressor",),
    "sklearn.linear_model._ridge": ("Ridge", "RidgeClassifier", "RidgeCV", "RidgeClassifierCV"),
    "sklearn.linear_model._stochastic_gradient": ("SGDClassifier", "SGDRegressor"),
    "sklearn.linear_model._glm.glm": ("PoissonRegressor", "GammaRegressor", "TweedieRegressor"),
    "sklearn.linear_model._sgd_fast": (
        "Hinge",
        "SquaredHinge",
        "Log",
        "ModifiedHuber",
        "SquaredLoss",
        "Huber",
        "EpsilonInsensitive",
        "SquaredEpsilonInsensitive",
    ),
    "sklearn.svm._classes": (
        "SVC",
        "NuSVC",
        "SVR",
        "NuSVR",
        "LinearSVC",
        "LinearSVR",
        "OneClassSVM",
    ),
    "sklearn.tree._classes": (
        "DecisionTreeClassifier",
        "DecisionTreeRegressor",
        "ExtraTreeClassifier",
        "ExtraTreeRegressor",
    ),
    "sklearn.tree._tree": ("Tree",),
    "sklearn.ensemble._forest": (
        "RandomForestClassifier",
        "RandomForestRegressor",
        "ExtraTreesClassifier",
        "ExtraTreesRegressor",
    ),
    "sklearn.ensemble._gb": ("GradientBoostingClassifier", "GradientBoostingRegressor"),
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting": (
        "HistGradientBoostingClassifier",
        "HistGradientBoostingRegressor",
    ),
    "sklearn.ensemble._hist_gradient_boosting.binning": ("_BinMapper",),
    "sklearn.ensemble._hist_gradient_boosting.predictor": ("TreePredictor",),
    "sklearn.ensemble._iforest": ("IsolationForest",),
    "sklearn.ensemble._bagging": ("BaggingClassifier", "BaggingRegressor"),
    "sklearn.ensemble._weight_boosting": ("AdaBoostClassifier", "AdaBoostRegressor"),
    "sklearn.ensemble._voting": ("VotingClassifier", "VotingRegressor"),
    "sklearn.ensemble._stacking": ("StackingClassifier", "StackingRegressor"),
    "sklearn._loss.loss": (
        "HalfSquaredError",
        "AbsoluteError",
        "PinballLoss",
        "HuberLoss",
        "HalfPoissonLoss",
        "HalfGammaLoss",
        "HalfTweedieLoss",
        "HalfTweedieLossIdentity",
        "HalfBinomialLoss",
        "ExponentialLoss",
        "HalfMultinomialLoss",
    ),
    "sklearn._loss._loss": (
        "CyHalfSquaredError",
        "CyAbsoluteError",
        "CyPinballLoss",
        "CyHuberLoss",
        "CyHalfPoissonLoss",
        "CyHalfGammaLoss",
        "CyHalfTweedieLoss",
        "CyHalfTweedieLossIdentity",
        "CyHalfBinomialLoss",
        "CyExponentialLoss",
        "CyHalfMultinomialLoss",
        # Cython's pickle helpers: they only rebuild the class they are named after.
        "__pyx_unpickle_CyHalfSquaredError",
        "__pyx_unpickle_CyAbsoluteError",
        "__pyx_unpickle_CyPinballLoss",
        "__pyx_unpickle_CyHuberLoss",
        "__pyx_unpickle_CyHalfPoissonLoss",
        "__pyx_unpickle_CyHalfGammaLoss",
        "__pyx_unpickle_CyHalfTweedieLoss",
        "__pyx_unpickle_CyHalfTweedieLossIdentity",
        "__pyx_unpickle_CyHalfBinomialLoss",
        "__pyx_unpickle_CyExponentialLoss",
        "__pyx_unpickle_CyHalfMultinomialLoss",
    ),
    "sklearn._loss.link": (
        "IdentityLink",
        "LogLink",
        "LogitLink",
        "HalfLogitLink",
        "MultinomialLogit",
        "Interval",
    ),
    "sklearn.neighbors._classification": ("KNeighborsClassifier", "RadiusNeighborsClassifier"),
    "sklearn.neighbors._regression": ("KNeighborsRegressor", "RadiusNeighborsRegressor"),
    "sklearn.neighbors._nearest_centroid": ("NearestCentroid",),
    # newObj(cls) is cls.__new__(cls), the same thing the NEWOBJ opcode does.
    "sklearn.neighbors._kd_tree": ("KDTree", "newObj"),
    "sklearn.neighbors._ball_tree": ("BallTree", "newObj"),
    # Parameter-free metrics only: weighted ones (SEuclidean, weighted Minkowski) carry
    # vectors whose length the tree code trusts.
    "sklearn.metrics._dist_metrics": (
        "EuclideanDistance64",
        "ManhattanDistance64",
        "ChebyshevDistance64",
        "newObj",
    ),
    "sklearn.naive_bayes": (
        "GaussianNB",
        "MultinomialNB",
        "BernoulliNB",
        "ComplementNB",
        "CategoricalNB",
    ),
    "sklearn.discriminant_analysis": (
        "LinearDiscriminantAnalysis",
        "QuadraticDiscriminantAnalysis",
    ),
    "sklearn.neural_network._multilayer_perceptron": ("MLPClassifier", "MLPRegressor"),
    "sklearn.neural_network._stochastic_optimizers": ("AdamOptimizer", "SGDOptimizer"),
    "sklearn.dummy": ("DummyClassifier", "DummyRegressor"),
    "sklearn.calibration": (
        "CalibratedClassifierCV",
        "_CalibratedClassifier",
        "_SigmoidCalibration",
    ),
    "sklearn.isotonic": ("IsotonicRegression",),
    "sklearn.multiclass": ("OneVsRestClassifier", "OneVsOneClassifier", "_ConstantPredictor"),
    "sklearn.cluster._kmeans": ("KMeans", "MiniBatchKMeans"),
    "sklearn.decomposition._pca": ("PCA",),
    "sklearn.decomposition._truncated_svd": ("TruncatedSVD",),
    "sklearn.pipeline": ("Pipeline", "FeatureUnion"),
    "sklearn.compose._column_transformer": ("ColumnTransformer",),
    "sklearn.compose._target": ("TransformedTargetRegressor",),
    "sklearn.impute._base": ("SimpleImputer", "MissingIndicator"),
    "sklearn.preprocessing._data": (
        "StandardScaler",
        "MinMaxScaler",
        "MaxAbsScaler",
        "RobustScaler",
        "Normalizer",
        "Binarizer",
        "QuantileTransformer",
        "PowerTransformer",
    ),
    "sklearn.preprocessing._encoders": ("OneHotEncoder", "OrdinalEncoder"),
    "sklearn.preprocessing._label": ("LabelEncoder", "LabelBinarizer"),
    "sklearn.preprocessing._polynomial": ("PolynomialFeatures", "SplineTransformer"),
    "sklearn.preprocessing._discretization": ("KBinsDiscretizer",),
    "sklearn.feature_selection._variance_threshold": ("VarianceThreshold",),
    "sklearn.feature_selection._univariate_selection": ("SelectKBest",),
    "sklearn.utils._bunch": ("Bunch",),
}
_RUNTIME: Final[dict[str, tuple[str, ...]]] = {
    # Array, dtype and scalar reconstruction, as numpy 2 pickles them.
    "numpy": (
        "ndarray",
        "dtype",
        "float64",
        "float32",
        "float16",
        "int64",
        "int32",
        "int16",
        "int8",
        "uint64",
        "uint32",
        "uint16",
        "uint8",
        "bool_",
        "str_",
        "bytes_",
        "object_",
    ),
    "numpy._core.multiarray": ("_reconstruct", "scalar"),
    "numpy._core.numeric": ("_frombuffer",),
    # random_state=np.random.RandomState(...)/Generator(...) and SeedSequence; the ctor helpers
    # only call a bit generator class, which must itself pass this allowlist.
    "numpy.random._pickle": ("__randomstate_ctor", "__generator_ctor", "__bit_generator_ctor"),
    "numpy.random._mt19937": ("MT19937",),
    "numpy.random._pcg64": ("PCG64", "PCG64DXSM"),
    "numpy.random._philox": ("Philox",),
    "numpy.random._sfc64": ("SFC64",),
    "numpy.random.bit_generator": ("SeedSequence", "__pyx_unpickle_SeedSequence"),
    "numpy.random.mtrand": ("RandomState",),
    "numpy.random._generator": ("Generator",),
    "scipy.sparse._csr": ("csr_matrix", "csr_array"),
    "scipy.sparse._csc": ("csc_matrix", "csc_array"),
    # The placeholder joblib writes before each array; NOT the legacy NDArrayWrapper, which
    # np.load()s a path taken from the stream with allow_pickle=True.
    "joblib.numpy_pickle": ("NumpyArrayWrapper",),
    "builtins": ("slice", "set", "frozenset", "complex", "bytearray", "range"),
}
ALLOWED_GLOBALS: Final[frozenset[tuple[str, str]]] = frozenset(
    (module, name)
    for table in (_ESTIMATORS, _RUNTIME)
    for module, names in table.items()
    for name in names
)

# skops spells types "module.qualname"; ours is the same list of classes, so a model loads
# the same way whichever format it came in. Never extended with get_untrusted_types().
SKOPS_TRUSTED: Final[list[str]] = sorted(
    f"{module}.{name}"
    for module, name in ALLOWED_GLOBALS
    if name[:1].isupper() and module != "joblib.numpy_pickle"
)

ALLOWED_ONNX_DOMAINS: Final = frozenset({"", "ai.onnx", "ai.onnx.ml"})
# Weights in files beside the graph (what exporters write past 2 GB, and torch.onnx.export with
# dynamo=True by default) are refused: only the .onnx file is uploaded and loaded from bytes, so
# no path in it is ever opened. The message says how to keep the weights inside the file.
EXTERNAL_DATA_REFUSED: Final = (
    "model refused: ONNX tensors stored as external data (weights in files beside the .onnx "
    "file); export with the weights inside the file: torch.onnx.export(..., "
    "external_data=False), or onnx.save_model(onnx.load(path), new_path, "
    "save_as_external_data=False) for models under 2 GB"
)
_NAME_LIMIT = 120


def _short(text: str) -> str:
    """Clip attacker-chosen text before it goes into an error message."""
    return text if len(text) <= _NAME_LIMIT else text[:_NAME_LIMIT] + "..."


def _restricted_find_class(module: str, name: str) -> Any:
    """Resolve one allowlisted global by exact (module, qualname), or refuse the file."""
    if (module, name) not in ALLOWED_GLOBALS:
        raise ModelRejected(
            f"model refused: global '{_short(module)}.{_short(name)}' is not allowed"
        )
    mod = sys.modules.get(module) or importlib.import_module(module)
    # vars() rather than getattr: a module-level name only, never an attribute path.
    return vars(mod)[name]


def _refuse_class_build(stack: list[Any]) -> None:
    """Refuse BUILD whose target is a class: it would patch the class for the whole process."""
    if len(stack) >= 2 and isinstance(stack[-2], type):
        raise ModelRejected(
            f"model refused: the file modifies the class '{_short(stack[-2].__qualname__)}'"
        )


# The pure-Python unpickler: its dispatch table can be hooked (the C one cannot); typeshed
# does not describe its internals (stack, load_build), hence Any.
_PyUnpickler: Any = pickle._Unpickler


class _RestrictedPlainUnpickler(_PyUnpickler):  # type: ignore[misc]  # see _PyUnpickler
    """The pure-Python unpickler with the allowlist, for streams nested inside joblib files."""

    dispatch = _PyUnpickler.dispatch.copy()

    def find_class(self, module: str, name: str) -> Any:
        """Resolve allowlisted globals only."""
        return _restricted_find_class(module, name)

    def load_build(self) -> None:
        """Apply BUILD to instances only."""
        _refuse_class_build(self.stack)
        _PyUnpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build


class RestrictedUnpickler(NumpyUnpickler):  # type: ignore[misc]  # joblib is untyped
    """joblib's unpickler (the pure-Python one, so BUILD can be hooked) with the allowlist.

    Loads both joblib files and plain pickles: without NumpyArrayWrapper globals in the
    stream it behaves as pickle._Unpickler.
    """

    dispatch = NumpyUnpickler.dispatch.copy()

    def find_class(self, module: str, name: str) -> Any:
        """Resolve allowlisted globals only."""
        return _restricted_find_class(module, name)

    def load_build(self) -> None:
        """Apply BUILD to instances only, then swap joblib's array placeholders for arrays."""
        _refuse_class_build(self.stack)
        _PyUnpickler.load_build(self)
        wrapper = self.stack[-1]
        if isinstance(wrapper, NumpyArrayWrapper):
            self.stack[-1] = self._read_array(wrapper)

    dispatch[pickle.BUILD[0]] = load_build

    def _read_array(self, wrapper: Any) -> Any:
        """Read the array that follows a NumpyArrayWrapper in the stream."""
        if not isinstance(getattr(wrapper, "dtype", None), np.dtype):
            raise ModelRejected("model refused: malformed joblib array header")
        if wrapper.dtype.hasobject:
            # joblib reads object arrays with a fresh plain pickle._Unpickler that only
            # borrows find_class; ours also refuses BUILD on classes inside that stream.
            array = _RestrictedPlainUnpickler(self.file_handle).load()
            if not isinstance(array, np.ndarray):
                raise ModelRejected("model refused: malformed joblib object array")
            return array
        return wrapper.read_array(self, self.ensure_native_byte_order)


def load_pickle(path: Path) -> Any:
    """Unpickle a joblib (possibly compressed) or plain pickle file through the allowlist."""
    with path.open("rb") as raw:
        if _detect_compressor(raw) == "compat":
            # joblib < 0.9.3 files are read by joblib's compatibility loader with plain pickle.
            raise ModelRejected("model refused: legacy joblib format (before 0.9.3)")
        with _validate_fileobject_and_memmap(raw, str(path), None) as (stream, _):
            unpickler = RestrictedUnpickler(str(path), stream, ensure_native_byte_order=True)
            try:
                return unpickler.load()
            except ModelRejected:
                raise
            except MemoryError:
                raise
            except Exception as exc:
                raise ModelRejected(f"model could not be unpickled: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """Name an exception for a client, clipping its message."""
    message = str(exc)
    return f"{type(exc).__name__}: {_short(message)}" if message else type(exc).__name__


def load_skops(path: Path, max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_BYTES) -> Any:
    """Load a skops file, trusting only our server-side list of types."""
    # Importing skops would import torch where it is installed (WithoutArrayBackends says why).
    keep_array_backends_out()
    import skops.io as sio
    from skops.io.exceptions import UntrustedTypesFoundException

    check_zip_bounds(path, max_expanded_bytes)
    try:
        return sio.load(path, trusted=SKOPS_TRUSTED)
    except UntrustedTypesFoundException as exc:
        raise ModelRejected(f"model refused: untrusted types {_short(str(exc))}") from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise ModelRejected(f"model could not be loaded: {_describe(exc)}") from exc


def _onnx_graphs(graph: Any) -> Iterator[Any]:
    """Yield a graph and every subgraph nested in its nodes' attributes."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _onnx_graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _onnx_graphs(sub)


def check_onnx(data: bytes) -> Any:
    """Parse an ONNX model; refuse external data, custom domains and data-driven shapes.

    The operator and shape rules are modelyard.serving.onnx_graph's.

    Returns the parsed onnx.ModelProto.
    """
    import onnx
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # no stubs

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelRejected("model refused: not a valid ONNX protobuf") from exc
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelRejected("model refused: not a valid ONNX model (no graph or IR version)")
    external = onnx.TensorProto.EXTERNAL
    for opset in model.opset_import:
        if opset.domain not in ALLOWED_ONNX_DOMAINS:
            raise ModelRejected(f"model refused: custom operator domain '{_short(opset.domain)}'")
    if len(model.functions):
        raise ModelRejected("model refused: ONNX local functions are not supported")
    for graph in _onnx_graphs(model.graph):
        tensors = [*graph.initializer, *(s.values for s in graph.sparse_initializer)]
        for node in graph.node:
            if node.domain not in ALLOWED_ONNX_DOMAINS:
                raise ModelRejected(
                    f"model refused: custom operator domain '{_short(node.domain)}'"
                )
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    tensors.append(attribute.t)
                tensors.extend(attribute.tensors)
        for tensor in tensors:
            if tensor.data_location == external or len(tensor.external_data):
                raise ModelRejected(EXTERNAL_DATA_REFUSED)
    check_onnx_graph(model.graph)
    return model


def load_onnx(data: bytes, *, threads: int = 1) -> Any:
    """Check an ONNX model, then open an ONNX Runtime session on its bytes.

    A call runs on `threads` intra-op threads (one for the upload probe; a server's share of
    the cores when serving, `modelyard.serving.threads`).
    """
    import onnxruntime as ort

    check_onnx(data)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # The capped arena of modelyard.serving.runtimes.onnx.cap_onnx_memory, once registered.
    options.add_session_config_entry("session.use_env_allocators", "1")
    try:
        # From bytes, not a path: ONNX Runtime then has no folder to read external data from.
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except MemoryError:
        raise
    except Exception as exc:
        if "bad_alloc" in str(exc):
            # ONNX Runtime reports running out of address space as a C++ bad_alloc.
            raise MemoryError(str(exc)) from exc
        raise ModelRejected(f"model could not be loaded by ONNX Runtime: {_describe(exc)}") from exc


def load_xgboost(data: bytes) -> Any:
    """Load an XGBoost JSON or UBJ model from its bytes."""
    import xgboost as xgb

    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(data))
    except xgb.core.XGBoostError as exc:
        raise ModelRejected(f"model could not be loaded by XGBoost: {_describe(exc)}") from exc
    booster.set_param({"nthread": 1})
    return booster


def load_lightgbm(data: bytes) -> Any:
    """Check a LightGBM text model's trees, then load it."""
    import lightgbm as lgb

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelRejected("model refused: LightGBM model is not UTF-8 text") from exc
    # Before LightGBM parses it: a truncated or inconsistent file aborts the process.
    check_lightgbm_text(text)
    try:
        return lgb.Booster(model_str=text)
    except lgb.basic.LightGBMError as exc:
        raise ModelRejected(f"model could not be loaded by LightGBM: {_describe(exc)}") from exc


def load_model(path: Path, fmt: ModelFormat) -> Any:
    """Load a model file with the restrictions of its format, then check its structure.

    Raises:
        ModelRejected: the file failed a check or did not load; the message names the reason.
    """
    return load_checked_model(path, fmt)[0]


def load_checked_model(
    path: Path, fmt: ModelFormat, *, onnx_threads: int = 1
) -> tuple[Any, StructureCost]:
    """Load and check a model like load_model; also return the worst cost of one of its rows.

    ONNX sessions run a call on `onnx_threads` intra-op threads.

    Raises:
        ModelRejected: the file failed a check or did not load; the message names the reason.
    """
    match fmt:
        case ModelFormat.JOBLIB | ModelFormat.PICKLE:
            model = load_pickle(path)
        case ModelFormat.SKOPS:
            model = load_skops(path)
        case ModelFormat.ONNX:
            model = load_onnx(path.read_bytes(), threads=onnx_threads)
        case ModelFormat.XGBOOST_JSON | ModelFormat.XGBOOST_UBJ:
            model = load_xgboost(path.read_bytes())
        case ModelFormat.LIGHTGBM_TEXT:
            model = load_lightgbm(path.read_bytes())
        case _:
            raise UnsupportedModelFormat(f"unsupported model format {fmt!s}")
    return model, check_structure(model)


__all__ = [
    "ALLOWED_GLOBALS",
    "SKOPS_TRUSTED",
    "RestrictedUnpickler",
    "check_onnx",
    "load_checked_model",
    "load_model",
]
