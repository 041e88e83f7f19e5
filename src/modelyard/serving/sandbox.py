"""What runs inside the disposable probe process: limits, restricted load, one prediction.

Imported by the forkserver (warm) and by each forked child. The server process imports only the
`describe_*` helpers (serving describes a loaded runtime the way the probe did); it never runs
`probe_child` or its limits, and an upload is first loaded only in a child.
"""

from __future__ import annotations

import json
import math
import os
import resource
import warnings
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.serving.formats import FRAMEWORK_OF, ModelFormat, ModelRejected
from modelyard.serving.loader import check_onnx, load_model
from modelyard.serving.onnx_cost import CostLimits, estimate_onnx_cost

# A model gets its columns as an array, in the order of the version's input schema, which the
# upload checked against the names a DataFrame-fitted model holds (registry.service): giving it
# no names is right, and scikit-learn's warning about it would come with every prediction.
warnings.filterwarnings(
    "ignore", message="X does not have valid feature names", category=UserWarning
)

CLASSIFICATION, REGRESSION, CLUSTERING = "classification", "regression", "clustering"
# LightGBM objectives by task (LightGBM docs, "objective"); ranking ones report no task.
LIGHTGBM_CLASSIFICATION = frozenset({"binary", "multiclass", "multiclassova", "softmax", "ova"})
LIGHTGBM_RANKING = frozenset({"lambdarank", "rank_xendcg"})
ONNX_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
# Every dtype an input tensor of a network may have (images, token ids, masks...).
TENSOR_DTYPES: dict[str, type[np.generic]] = {
    **ONNX_DTYPES,
    "tensor(float16)": np.float16,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64,
    "tensor(uint32)": np.uint32,
    "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
# Size of a dynamic dimension other than the rows in the probe's one prediction: enough for a
# few strided convolutions, small enough to keep the probe quick.
PROBE_DYNAMIC_DIM = 64


def limit_resources(memory_limit_bytes: int, timeout_seconds: float) -> None:
    """Cap this process's address space, CPU time and file writes; start a session of its own.

    The session lets the parent kill any helper process a model starts along with the child.
    """
    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    cpu = math.ceil(timeout_seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    # Loading and probing never writes files; a payload that tries gets SIGXFSZ.
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def run_probe(
    path: str,
    fmt: str,
    memory_limit_bytes: int,
    timeout_seconds: float,
    conn: Connection,
    cost_limits: CostLimits | None = None,
) -> None:
    """Child entry point: limit, load, check, predict once, send the outcome as JSON."""
    limit_resources(memory_limit_bytes, timeout_seconds)
    try:
        report = {
            "status": "ok",
            "report": probe_file(Path(path), ModelFormat(fmt), cost_limits or CostLimits()),
        }
    except ModelRejected as exc:
        report = {"status": "rejected", "reason": exc.detail}
    except MemoryError:
        report = {"status": "memory"}
    except RecursionError:
        report = {"status": "rejected", "reason": "model refused: nested too deeply to load"}
    except Exception as exc:
        report = {"status": "rejected", "reason": f"model failed the probe: {type(exc).__name__}"}
    conn.send_bytes(json.dumps(report).encode())
    conn.close()


def probe_file(
    path: Path, fmt: ModelFormat, cost_limits: CostLimits | None = None
) -> dict[str, Any]:
    """Load a model file, predict on one row, and describe it as JSON-safe data.

    An ONNX model's description includes its cost estimate within `cost_limits` (refused
    over them).
    """
    from joblib import parallel_config

    model = load_model(path, fmt)
    # A model's n_jobs must not start worker processes from the sandbox.
    with parallel_config(backend="sequential"):
        match fmt:
            case ModelFormat.ONNX:
                proto = check_onnx(path.read_bytes())
                cost = estimate_onnx_cost(proto, cost_limits or CostLimits())
                described = {**describe_onnx(model, proto), "cost": cost.as_json()}
            case ModelFormat.XGBOOST_JSON | ModelFormat.XGBOOST_UBJ:
                described = describe_xgboost(model)
            case ModelFormat.LIGHTGBM_TEXT:
                described = describe_lightgbm(model)
            case _:
                described = describe_sklearn(model)
    return {"framework": FRAMEWORK_OF[fmt].value, "format": fmt.value, **described}


def json_scalar(value: Any) -> int | float | str:
    """Turn a class label into a JSON-safe Python scalar."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return str(value)


def _value_type(values: Any) -> str:
    kind = np.asarray(values).dtype.kind
    return {"i": "int", "u": "int", "b": "int", "f": "float"}.get(kind, "str")


def _public_class_path(cls: type) -> str:
    """Name a class by its public module: sklearn.linear_model._logistic -> sklearn.linear_model."""
    parts = []
    for part in cls.__module__.split("."):
        if part.startswith("_"):
            break
        parts.append(part)
    return ".".join([*parts, cls.__qualname__])


def _predict_row(fn: Any, n_features: int) -> Any:
    try:
        return np.asarray(fn(np.zeros((1, n_features))))
    except Exception as exc:
        raise ModelRejected(
            f"model refused: prediction on a row of {n_features} zeros failed "
            f"({type(exc).__name__})"
        ) from exc


def describe_sklearn(model: Any) -> dict[str, Any]:
    """Probe an sklearn estimator."""
    from sklearn.base import is_classifier, is_clusterer, is_regressor

    if not callable(getattr(model, "predict", None)):
        raise ModelRejected("model refused: model has no predict method")
    n_features = getattr(model, "n_features_in_", None)
    if not isinstance(n_features, int | np.integer) or n_features < 1:
        raise ModelRejected("model refused: the model does not say how many features it takes")
    n_features = int(n_features)
    names = getattr(model, "feature_names_in_", None)
    feature_names = [str(n) for n in names] if names is not None else None
    prediction = _predict_row(model.predict, n_features)
    if is_classifier(model):
        task = CLASSIFICATION
    elif is_regressor(model):
        task = REGRESSION
    elif is_clusterer(model):
        task = CLUSTERING
    else:
        task = None
    raw_classes = getattr(model, "classes_", None) if task == CLASSIFICATION else None
    classes = None
    if raw_classes is not None and np.asarray(raw_classes).ndim == 1:
        classes = [json_scalar(c) for c in np.asarray(raw_classes)]
    shape = [-1, *prediction.shape[1:]]
    outputs: list[dict[str, Any]] = [
        {"name": "predictions", "type": _value_type(prediction), "shape": shape}
    ]
    has_proba = task == CLASSIFICATION and hasattr(model, "predict_proba")
    if has_proba:
        proba = _predict_row(model.predict_proba, n_features)
        outputs.append({"name": "probabilities", "type": "float", "shape": [-1, *proba.shape[1:]]})
    return {
        "task_type": task,
        "n_features": n_features,
        "feature_names": feature_names,
        "classes": classes,
        "model_class": _public_class_path(type(model)),
        "has_proba": has_proba,
        "outputs": outputs,
    }


def _onnx_classes(model: Any) -> list[int | float | str] | None:
    """Read class labels from the ONNX-ML classifier or ZipMap node, if there is one."""
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name in {"classlabels_ints", "classlabels_int64s"} and attribute.ints:
                return [int(v) for v in attribute.ints]
            if attribute.name == "classlabels_strings" and attribute.strings:
                return [v.decode("utf-8", "replace") for v in attribute.strings]
    return None


def describe_onnx(session: Any, proto: Any) -> dict[str, Any]:
    """Probe an ONNX Runtime session: one prediction on zeros, and what its tensors are.

    A single numeric [batch, n_features] input with a fixed width is a tabular model (its
    classes and task read from the graph); any other set of named tensors is a network, run
    on one row with dynamic dimensions at `PROBE_DYNAMIC_DIM`.
    """
    inputs = session.get_inputs()
    if not inputs:
        raise ModelRejected("model refused: the ONNX model has no input tensor")
    described_inputs: list[dict[str, Any]] = []
    feeds: dict[str, Any] = {}
    for meta in inputs:
        dtype = TENSOR_DTYPES.get(meta.type)
        if dtype is None or meta.shape is None:
            raise ModelRejected(
                f"model refused: ONNX input '{_clip(meta.name)}' must be a numeric or boolean "
                f"tensor of known rank, not {_clip(str(meta.type))}"
            )
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in meta.shape]
        # A dynamic first dimension is the rows (one), the others PROBE_DYNAMIC_DIM.
        shape = [
            d if d > 0 else (1 if axis == 0 else PROBE_DYNAMIC_DIM) for axis, d in enumerate(dims)
        ]
        feeds[meta.name] = np.zeros(shape, dtype=dtype)
        described_inputs.append(
            {"name": str(meta.name), "type": np.dtype(dtype).name, "shape": dims}
        )
    first = inputs[0]
    is_tabular = (
        len(inputs) == 1
        and first.type in ONNX_DTYPES
        and len(first.shape) == 2
        and isinstance(first.shape[1], int)
        and first.shape[1] >= 1
    )
    what = (
        f"a row of {first.shape[1]} zeros"
        if is_tabular
        else "zeros of shapes " + ", ".join(str(list(v.shape)) for v in feeds.values())
    )
    try:
        results = session.run(None, feeds)
    except Exception as exc:
        raise ModelRejected(
            f"model refused: prediction on {_clip(what)} failed ({type(exc).__name__})"
        ) from exc
    outputs: list[dict[str, Any]] = []
    for meta, value in zip(session.get_outputs(), results, strict=True):
        kind = meta.type
        value_type = "str" if "string" in kind else "int" if "int" in kind else "float"
        dims = [d if isinstance(d, int) else -1 for d in (meta.shape or [])]
        outputs.append({"name": meta.name, "type": value_type, "shape": dims})
        del value
    if not is_tabular:
        # A network: what its outputs mean (logits, embeddings, boxes) is the uploader's to say;
        # each is served as the tensor it is.
        for output, value in zip(outputs, results, strict=True):
            output["dtype"] = np.asarray(value).dtype.name
        return {
            "task_type": None,
            "n_features": None,
            "feature_names": None,
            "classes": None,
            "model_class": "onnx",
            "has_proba": False,
            "outputs": outputs,
            "inputs": described_inputs,
        }
    label = [o for o in outputs if o["type"] in {"int", "str"}]
    scores = [o for o in outputs if o["type"] == "float"]
    is_classifier = bool(label) and bool(scores)
    return {
        "task_type": CLASSIFICATION
        if is_classifier
        else REGRESSION
        if len(outputs) == 1 and scores
        else None,
        "n_features": int(first.shape[1]),
        "feature_names": None,
        "classes": _onnx_classes(proto) if is_classifier else None,
        "model_class": "onnx",
        "has_proba": is_classifier,
        "outputs": outputs,
        "inputs": described_inputs,
    }


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def describe_xgboost(booster: Any) -> dict[str, Any]:
    """Probe an XGBoost Booster; the task comes from its objective."""
    import xgboost as xgb

    config = json.loads(booster.save_config())
    objective = str(config["learner"]["objective"]["name"])
    num_class = int(config["learner"]["learner_model_param"].get("num_class", "0"))
    n_features = int(booster.num_features())
    if n_features < 1:
        raise ModelRejected("model refused: the model does not say how many features it takes")
    names = booster.feature_names
    matrix = xgb.DMatrix(np.zeros((1, n_features)), feature_names=names, nthread=1)
    try:
        prediction = np.asarray(booster.predict(matrix))
    except xgb.core.XGBoostError as exc:
        raise ModelRejected("model refused: prediction on a row of zeros failed") from exc
    classes: list[int | float | str] | None = None
    task: str | None
    has_proba = False
    if objective.startswith(("binary:", "multi:")):
        task = CLASSIFICATION
        classes = list(range(num_class)) if num_class > 1 else [0, 1]
        has_proba = objective in {"binary:logistic", "multi:softprob"}
    elif objective.startswith("rank:"):
        task = None
    else:
        task = REGRESSION
    outputs: list[dict[str, Any]] = [
        {"name": "predictions", "type": "int" if classes else "float", "shape": [-1]}
    ]
    if has_proba and classes is not None:
        outputs.append({"name": "probabilities", "type": "float", "shape": [-1, len(classes)]})
    del prediction
    return {
        "task_type": task,
        "n_features": n_features,
        "feature_names": list(names) if names else None,
        "classes": classes,
        "model_class": "xgboost.Booster",
        "has_proba": has_proba,
        "outputs": outputs,
    }


def describe_lightgbm(booster: Any) -> dict[str, Any]:
    """Probe a LightGBM Booster; the task comes from the objective in its model string."""
    n_features = int(booster.num_feature())
    text = booster.model_to_string()
    objective = ""
    num_class = 1
    for line in text.splitlines():
        if line.startswith("objective="):
            objective = line.partition("=")[2].split()[0] if line.partition("=")[2] else ""
        elif line.startswith("num_class="):
            num_class = int(line.partition("=")[2])
        elif not line.strip():
            break
    try:
        prediction = np.asarray(booster.predict(np.zeros((1, n_features)), num_threads=1))
    except Exception as exc:
        raise ModelRejected(
            f"model refused: prediction on a row of zeros failed ({type(exc).__name__})"
        ) from exc
    names = [str(n) for n in booster.feature_name()]
    default_names = [f"Column_{i}" for i in range(n_features)]
    classes: list[int | float | str] | None = None
    task: str | None = REGRESSION
    if objective in LIGHTGBM_CLASSIFICATION:
        task = CLASSIFICATION
        classes = list(range(num_class)) if num_class > 1 else [0, 1]
    elif objective in LIGHTGBM_RANKING:
        task = None
    outputs: list[dict[str, Any]] = [
        {"name": "predictions", "type": "int" if classes else "float", "shape": [-1]}
    ]
    if classes is not None:
        outputs.append({"name": "probabilities", "type": "float", "shape": [-1, len(classes)]})
    del prediction
    return {
        "task_type": task,
        "n_features": n_features,
        "feature_names": None if names == default_names else names,
        "classes": classes,
        "model_class": "lightgbm.Booster",
        "has_proba": classes is not None,
        "outputs": outputs,
    }
