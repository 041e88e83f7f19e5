"""The ONNX runtime: an ONNX Runtime session with one input tensor, run on one thread."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from modelyard.serving.formats import Framework, ModelFormat, ModelRejected
from modelyard.serving.loader import check_onnx
from modelyard.serving.runtimes.base import Runtime, as_output
from modelyard.serving.sandbox import CLASSIFICATION, ONNX_DTYPES, describe_onnx


def _is_tensor(kind: str) -> bool:
    return kind.startswith("tensor(")


class OnnxRuntime(Runtime):
    """An ONNX Runtime InferenceSession; one run answers both labels and probabilities."""

    framework = Framework.ONNX
    format = ModelFormat.ONNX

    def __init__(self, session: Any, data: bytes, *, nbytes: int) -> None:
        # The probe's description (one run on zeros included), from the parsed graph: the
        # session does not expose the classifier's label attributes.
        described = describe_onnx(session, check_onnx(data))
        graph_input = session.get_inputs()[0]
        outputs = session.get_outputs()
        self._session = session
        self.task_type = described["task_type"]
        self.n_features = described["n_features"]
        self.feature_names = None
        self.classes = described["classes"]
        self.has_proba = bool(described["has_proba"])
        self.nbytes = nbytes
        self.input_dtype = np.dtype(ONNX_DTYPES[graph_input.type])
        self.input_name = str(graph_input.name)
        if self.task_type == CLASSIFICATION:
            # skl2onnx and onnxmltools name them "label" and "probabilities"; go by type.
            label = next(o for o in outputs if _is_tensor(o.type) and "float" not in o.type)
            scores = [o for o in outputs if o.type in {"tensor(float)", "tensor(double)"}]
            if not scores:
                raise ModelRejected("model refused: ONNX classifier without a probability tensor")
            self._output_names = [str(label.name), str(scores[0].name)]
        else:
            self._output_names = [str(outputs[0].name)]

    def predict(self, x: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
        """Run the session once, asking only for the outputs served."""
        results = self._session.run(self._output_names, {self.input_name: x})
        predictions = as_output(results[0])
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            # Regressors export [n, 1]; single-target predictions are [n] across frameworks.
            predictions = predictions[:, 0]
        probabilities = np.asarray(results[1]) if len(results) > 1 else None
        return predictions, probabilities
