"""The Runtime interface every framework implements, and the helpers they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt

from modelyard.errors import ModelyardError, Unprocessable
from modelyard.serving.formats import Framework, ModelFormat

# The symbol of a network's dynamic first dimension, which all its inputs share: the rows.
ROWS: Final = "rows"
# The V2 protocol needs an input tensor name; models that do not name their input get this one.
DEFAULT_INPUT_NAME: Final = "input-0"
# Added to every estimate: interpreter objects, session and booster handles, small buffers.
BASE_OVERHEAD_BYTES: Final = 256 * 1024
# Loaded size per artifact byte, by format. Estimates from how each format stores a model, not
# measurements: pickles and skops zips hold the arrays raw (plus Python objects around them);
# compressed joblib files expand; ONNX Runtime keeps its own copy of the initializers next to
# the optimised graph; XGBoost JSON and LightGBM text spell each node's numbers as decimal text,
# several times larger than the binary trees they parse into, UBJ is close to binary.
MEMORY_FACTOR: Final[dict[ModelFormat, float]] = {
    ModelFormat.SKOPS: 1.5,
    ModelFormat.JOBLIB: 1.5,
    ModelFormat.PICKLE: 1.5,
    ModelFormat.ONNX: 2.0,
    ModelFormat.XGBOOST_JSON: 1.0,
    ModelFormat.XGBOOST_UBJ: 1.5,
    ModelFormat.LIGHTGBM_TEXT: 1.0,
}
COMPRESSED_JOBLIB_FACTOR: Final = 4.0
# The magics of the compressors joblib writes (same list as formats.detect_format).
_COMPRESSED_PREFIXES: Final = (b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x5d\x00")


class ArtifactCorrupted(ModelyardError):
    """A stored artifact's bytes do not match the sha256 recorded when it was uploaded."""

    type: ClassVar[str] = "artifact-corrupted"

    def __init__(self) -> None:
        # Neither the key nor the digests: they name the store's layout, not the client's error.
        super().__init__("the artifact of this model version failed its integrity check")


class InferenceLimitExceeded(Unprocessable):
    """One prediction call passed the time or memory a server allows it.

    A 422, not a 503: the cost comes from this model on these inputs, so the same request
    would fail the same way again; a 5xx with Retry-After would invite clients (and load
    balancers) to repeat the costly request, and count a client's input as a server fault.
    """

    type: ClassVar[str] = "inference-limit-exceeded"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named input or output tensor of a network: its dtype and shape.

    `shape` has -1 for a dynamic dimension; `symbols` names the dynamic ones as the graph does
    ("batch", "sequence"; None when it does not), so that inputs sharing a dimension are
    checked to agree before the model runs.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    symbols: tuple[str | None, ...]
    # The largest size of each dimension a request may send (inputs: what the version's cost
    # estimate assumed, the rows at its `max_rows`); None: no bound but the request limits.
    bounds: tuple[int, ...] | None = None


class Runtime(ABC):
    """A loaded model version behind one small interface."""

    # Whether a call's cost is fixed by the input's shape, within a small factor: then the cost
    # of past calls predicts the next one's, and the batcher may run cheap calls on the event
    # loop. False when input values can make a call much slower (data-driven graphs, deep
    # trees, neighbour searches): such calls always run on the predict threads.
    is_cost_bounded_by_shape: bool = False

    framework: Framework
    format: ModelFormat
    task_type: str | None
    n_features: int | None
    feature_names: list[str] | None
    classes: list[int | float | str] | None
    has_proba: bool
    nbytes: int
    input_dtype: np.dtype[Any]
    input_name: str
    # Most rows one predict call may carry (None: no bound but the request limits). ONNX
    # graphs get one from their cost estimate; the batcher never merges past it.
    max_rows: int | None = None
    # Networks (models that are not one [rows, features] table): their named input and output
    # tensors, served by `run`; None for tabular models, served by `predict`.
    tensor_inputs: tuple[TensorSpec, ...] | None = None
    tensor_outputs: tuple[TensorSpec, ...] = ()
    # Whether every input and output tensor's first dimension is the same dynamic batch
    # dimension: only then may the batcher stack requests along it.
    has_batch_axis: bool = False

    def run(self, feeds: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Run a network on its named input tensors; return every output tensor by name.

        Safe to call from several threads at once.

        Raises:
            NotImplementedError: a tabular model (`tensor_inputs` is None).
        """
        raise NotImplementedError(f"{type(self).__name__} takes a table, not named tensors")

    @abstractmethod
    def predict(self, x: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
        """Return (predictions[n], probabilities[n, n_classes] or None) for a 2-D batch x.

        `x` is [n, n_features] of `input_dtype`. Classifiers answer class labels (the values of
        `classes`) and, when `has_proba`, probabilities whose columns follow `classes`;
        regressors answer floats ([n, n_targets] for multi-output models) and no probabilities.
        Safe to call from several threads at once.
        """


def estimate_nbytes(data: bytes, fmt: ModelFormat) -> int:
    """Estimate the memory a model loaded from `data` takes (the cache's byte bound)."""
    factor = MEMORY_FACTOR[fmt]
    if fmt is ModelFormat.JOBLIB and data.startswith(_COMPRESSED_PREFIXES):
        factor = COMPRESSED_JOBLIB_FACTOR
    return int(len(data) * factor) + BASE_OVERHEAD_BYTES


def as_output(values: Any) -> npt.NDArray[Any]:
    """Return predictions as a numeric or object (Python str) array, never fixed-width strings."""
    array = np.asarray(values)
    if array.dtype.kind in "USV":
        return array.astype(object)
    return array


def binary_probabilities(p: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Turn P(class 1) of shape [n] into [n, 2] columns for classes 0 and 1."""
    p = np.asarray(p, dtype=np.float64)
    return np.column_stack([1.0 - p, p])


def class_array(classes: list[int | float | str]) -> npt.NDArray[Any]:
    """Return class labels as an array to index with argmax (object dtype for strings)."""
    return as_output(np.asarray(classes))
