"""Reference predictions: the test's own model files loaded with the libraries directly."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import skops.io as sio
import xgboost as xgb

from modelyard.serving.formats import ModelFormat
from tests.serving import legit


def features(case: legit.LegitCase, rows: int = 8) -> np.ndarray:
    """Return `rows` real feature rows of the width the case's model takes."""
    x = legit.iris()[0] if case.n_features == 4 else legit.regression_data()[0]
    return np.asarray(x[:rows], dtype=np.float64)


def reference(case: legit.LegitCase, path: Path, x: np.ndarray) -> tuple[list[Any], Any]:
    """Return (predictions, probabilities or None) of the model in `path`, loaded in-process.

    These files were written by the tests themselves, so the unrestricted loaders are fine here.
    """
    if case.format == ModelFormat.SKOPS:
        model = sio.load(path, trusted=sio.get_untrusted_types(file=path))
    elif case.format == ModelFormat.JOBLIB:
        model = joblib.load(path)
    elif case.format == ModelFormat.PICKLE:
        with path.open("rb") as f:
            model = pickle.load(f)  # noqa: S301 - a file this test suite wrote
    elif case.format == ModelFormat.ONNX:
        session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outputs = session.run(None, {name: x.astype(np.float32)})
        if case.task_type == "classification":
            return outputs[0].tolist(), np.asarray(outputs[1])
        return np.asarray(outputs[0]).ravel().tolist(), None
    elif case.format in (ModelFormat.XGBOOST_JSON, ModelFormat.XGBOOST_UBJ):
        booster = xgb.Booster(model_file=str(path))
        raw = booster.predict(xgb.DMatrix(x))
        return _booster_outputs(case, raw)
    else:
        lgb_booster = lgb.Booster(model_file=str(path))
        return _booster_outputs(case, np.asarray(lgb_booster.predict(x)))
    predictions = model.predict(x).tolist()
    if case.task_type == "classification":
        return predictions, model.predict_proba(x)
    return predictions, None


def _booster_outputs(case: legit.LegitCase, raw: np.ndarray) -> tuple[list[Any], Any]:
    if case.task_type != "classification":
        return raw.ravel().tolist(), None
    assert case.classes is not None
    if raw.ndim == 1:  # binary objective: the probability of class 1
        raw = np.column_stack([1 - raw, raw])
    labels = [case.classes[i] for i in raw.argmax(axis=1)]
    return labels, raw
