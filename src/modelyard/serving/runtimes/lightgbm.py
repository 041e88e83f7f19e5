"""The LightGBM runtime: a Booster predicting on one thread."""

from __future__ import annotations

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
from modelyard.serving.sandbox import CLASSIFICATION, describe_lightgbm

# One independent sigmoid per class: rows do not sum to 1 until normalised.
ONE_VS_ALL_OBJECTIVES: Final = frozenset({"multiclassova", "ova", "ovr", "multiclass_ova"})


def _objective(text: str) -> str:
    """Read the objective's name from a LightGBM model string's header."""
    header = text.partition("\nTree=")[0]
    for line in header.splitlines():
        if line.startswith("objective="):
            value = line.partition("=")[2].split()
            return value[0] if value else ""
    return ""


class LightGBMRuntime(Runtime):
    """A LightGBM Booster; classifiers map argmax of its probabilities to `classes`."""

    framework = Framework.LIGHTGBM
    format = ModelFormat.LIGHTGBM_TEXT

    def __init__(self, booster: Any, text: str, *, nbytes: int) -> None:
        described = describe_lightgbm(booster)
        self._booster = booster
        self._is_one_vs_all = _objective(text) in ONE_VS_ALL_OBJECTIVES
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
        """Predict on one thread; classifiers get probabilities and labels from them."""
        raw = np.asarray(self._booster.predict(x, num_threads=1))
        if self.task_type != CLASSIFICATION or self._labels is None:
            return raw, None
        if raw.ndim == 1:
            probabilities = binary_probabilities(raw)
        elif self._is_one_vs_all:
            # Normalised so that every classifier's probability rows sum to 1; the argmax, and
            # so the label, is the same.
            probabilities = raw / np.maximum(
                raw.sum(axis=1, keepdims=True), np.finfo(raw.dtype).tiny
            )
        else:
            probabilities = raw
        return self._labels[np.argmax(probabilities, axis=1)], probabilities
