"""Tiny Runtime implementations for the cache and batching tests."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from modelyard.serving.formats import Framework, ModelFormat
from modelyard.serving.runtimes import Runtime
from modelyard.serving.runtimes.base import ROWS, TensorSpec


class FakeRuntime(Runtime):
    """A regressor whose prediction of a row is its first column: each row is traceable.

    Records every call (its row count and thread); `gate`, when given, blocks each predict until
    set, and `entered` is set as a predict starts; `error` is raised by predict when set.
    """

    framework = Framework.SKLEARN
    format = ModelFormat.SKOPS
    task_type: str | None = "regression"
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


class FakeNetwork(FakeRuntime):
    """A network of two named inputs, `a` and `b` ([rows, n] each): outputs `sum` (a + b) and
    `first` (a's first column), so every output row names its input row.

    Records each call's rows like FakeRuntime; `has_batch_axis` says whether calls may stack.
    """

    framework = Framework.ONNX
    format = ModelFormat.ONNX
    task_type: str | None = None
    is_cost_bounded_by_shape = False

    def __init__(self, *, has_batch_axis: bool = True, gate: threading.Event | None = None) -> None:
        super().__init__(gate=gate)
        self.n_features = None
        self.has_batch_axis = has_batch_axis
        rows = -1 if has_batch_axis else 1
        symbols = (ROWS if has_batch_axis else None, None)
        self.tensor_inputs = tuple(
            TensorSpec(name, np.dtype(np.float64), (rows, -1), symbols) for name in ("a", "b")
        )
        self.tensor_outputs = (
            TensorSpec("sum", np.dtype(np.float64), (rows, -1), symbols),
            TensorSpec("first", np.dtype(np.float64), (rows,), symbols[:1]),
        )

    def run(self, feeds: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Return a + b and a's first column, after waiting for the gate if there is one."""
        first, _ = self.predict(feeds["a"])
        return {"sum": feeds["a"] + feeds["b"], "first": first}
