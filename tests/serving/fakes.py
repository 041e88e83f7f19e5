"""Tiny Runtime implementations for the cache and batching tests."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from modelyard.serving.formats import Framework, ModelFormat
from modelyard.serving.runtimes import Runtime


class FakeRuntime(Runtime):
    """A regressor whose prediction of a row is its first column: each row is traceable.

    Records every call (its row count and thread); `gate`, when given, blocks each predict until
    set, and `entered` is set as a predict starts; `error` is raised by predict when set.
    """

    framework = Framework.SKLEARN
    format = ModelFormat.SKOPS
    task_type = "regression"
    feature_names = None
    classes: list[int | float | str] | None = None
    has_proba = False
    input_name = "input-0"
    is_cost_bounded_by_shape = True

    def __init__(
        self, *, nbytes: int = 1000, n_features: int = 2, gate: threading.Event | None = None
    ) -> None:
        self.nbytes = nbytes
        self.n_features = n_features
        self.input_dtype = np.dtype(np.float64)
        self.gate = gate
        self.entered = threading.Event()
        self.error: Exception | None = None
        self.calls: list[int] = []
        self.threads: list[int] = []

    def predict(self, x: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
        """Return each row's first column, after waiting for the gate if there is one."""
        self.calls.append(len(x))
        self.threads.append(threading.get_ident())
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        if self.error is not None:
            raise self.error
        return x[:, 0].copy(), None


class FakeClassifier(FakeRuntime):
    """A classifier: label = first column as int, probabilities [1 - p, p] with p = label."""

    task_type = "classification"
    classes = [0, 1]  # noqa: RUF012 - a class-level constant of the Runtime interface
    has_proba = True

    def predict(self, x: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
        """Return labels from the first column and one-hot probabilities."""
        first, _ = super().predict(x)
        labels = first.astype(np.int64)
        return labels, np.column_stack([1.0 - labels, labels.astype(np.float64)])
