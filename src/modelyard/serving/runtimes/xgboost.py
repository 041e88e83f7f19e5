"""The XGBoost runtime: a Booster predicting in place on one thread."""

from __future__ import annotations

import json
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from modelyard.serving.formats import Framework, ModelFormat
from modelyard.serving.runtimes.base import (
    DEFAULT_INPUT_NAME,
    Runtime,
    binary_probabilities,
    class_array,
)
from modelyard.serving.sandbox import CLASSIFICATION, describe_xgboost

# binary:logitraw answers a margin: class 1 when it is positive (sigmoid(0) = 0.5).
MARGIN_OBJECTIVES: Final = frozenset({"binary:logitraw"})


class XGBoostRuntime(Runtime):
    """An XGBoost Booster; classifiers map the booster's class indices to `classes`."""

    framework = Framework.XGBOOST

    def __init__(self, booster: Any, fmt: ModelFormat, *, nbytes: int) -> None:
        described = describe_xgboost(booster)
        self._booster = booster
        self._objective = str(json.loads(booster.save_config())["learner"]["objective"]["name"])
        self.format = fmt
        self.task_type = described["task_type"]
        self.n_features = described["n_features"]
        self.feature_names = described["feature_names"]
        self.classes = described["classes"]
        self.has_proba = bool(described["has_proba"])
        self.nbytes = nbytes
        # Unmeasured (None) counts as unbounded: such a runtime never runs on the event loop.
        self.input_dtype = np.dtype(np.float32)
        self.input_name = DEFAULT_INPUT_NAME
        self._labels = class_array(self.classes) if self.classes is not None else None

    def predict(self, x: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
        """Predict in place (no DMatrix); labels from probabilities, margins or indices."""
        # inplace_predict is thread-safe and skips building a DMatrix for every call.
        raw = np.asarray(self._booster.inplace_predict(x))
        if self.task_type != CLASSIFICATION or self._labels is None:
            return raw, None
        if self.has_proba:
            probabilities = raw if raw.ndim == 2 else binary_probabilities(raw)
            return self._labels[np.argmax(probabilities, axis=1)], probabilities
        if self._objective in MARGIN_OBJECTIVES:
            index = (raw > 0).astype(np.intp)
        else:
            # multi:softmax and binary:hinge answer the class index itself, as a float.
            index = raw.astype(np.intp)
        return self._labels[index], None
