"""The scikit-learn runtime: any fitted estimator or pipeline loaded by the restricted loader."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from modelyard.serving.formats import Framework, ModelFormat
from modelyard.serving.runtimes.base import DEFAULT_INPUT_NAME, Runtime, as_output
from modelyard.serving.sandbox import describe_sklearn


def _single_threaded(model: Any) -> None:
    """Set every n_jobs of the estimator (and its steps) to None, i.e. one job.

    Each predict already runs on one of the batcher's worker threads; a forest with n_jobs=-1
    would start a pool per call and fight the other requests for the cores.
    """
    get_params = getattr(model, "get_params", None)
    if get_params is None:
        return
    names = [name for name in get_params(deep=True) if name.rpartition("__")[2] == "n_jobs"]
    if names:
        model.set_params(**dict.fromkeys(names))


# Classifiers whose predict is, by construction, classes_[argmax(predict_proba)]: for them one
# predict_proba call gives both outputs and halves the cost of a small model's request. (Not
# SVC: its Platt-scaled probabilities may disagree with predict; not KNN: ties break apart.)
_LABELS_FROM_PROBA = frozenset(
    {
        ("sklearn.linear_model._logistic", "LogisticRegression"),
        ("sklearn.tree._classes", "DecisionTreeClassifier"),
        ("sklearn.tree._classes", "ExtraTreeClassifier"),
        ("sklearn.ensemble._forest", "RandomForestClassifier"),
        ("sklearn.ensemble._forest", "ExtraTreesClassifier"),
        ("sklearn.ensemble._gb", "GradientBoostingClassifier"),
        ("sklearn.ensemble._hist_gradient_boosting.gradient_boosting", "HistGradientBoostingClassifier"),
        ("sklearn.naive_bayes", "GaussianNB"),
    }
)  # fmt: skip


# scikit-learn's configuration is per thread. Inputs reach a model finite (checked by
# `predictions.inputs`, and JSON cannot carry NaN or infinities), so each thread that predicts
# tells scikit-learn once not to check them again: its check was ~4% of a small model's request.
_configured = threading.local()


def _assume_finite() -> None:
    if not getattr(_configured, "done", False):
        import sklearn

        sklearn.set_config(assume_finite=True)
        _configured.done = True


def _labels_from_proba(model: Any) -> bool:
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    kind = (type(final).__module__, type(final).__qualname__)
    return kind in _LABELS_FROM_PROBA and hasattr(final, "classes_")


class SklearnRuntime(Runtime):
    """A scikit-learn estimator: predict, and predict_proba when the estimator offers it."""

    framework = Framework.SKLEARN

    def __init__(self, model: Any, fmt: ModelFormat, *, nbytes: int) -> None:
        _single_threaded(model)
        # The upload probe's description, so that serving and upload agree on task and classes;
        # it also predicts once on a row of zeros, refusing a model that cannot.
        described = describe_sklearn(model)
        self._model = model
        self.format = fmt
        self.task_type = described["task_type"]
        self.n_features = described["n_features"]
        self.feature_names = described["feature_names"]
        self.classes = described["classes"]
        self.has_proba = bool(described["has_proba"])
        self.nbytes = nbytes
        # Unmeasured (None) counts as unbounded: such a runtime never runs on the event loop.
        self.input_dtype = np.dtype(np.float64)
        self.input_name = DEFAULT_INPUT_NAME
        self._labels_from_proba = self.has_proba and _labels_from_proba(model)

    def predict(self, x: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
        """Return the estimator's predict (labels for classifiers) and predict_proba."""
        _assume_finite()
        if self._labels_from_proba:
            proba = np.asarray(self._model.predict_proba(x))
            labels = np.asarray(self._model.classes_).take(proba.argmax(axis=1))
            return as_output(labels), proba
        predictions = as_output(self._model.predict(x))
        # Two calls rather than labels from argmax(proba): for some estimators (SVC with
        # probability=True) predict and predict_proba disagree, and predict is the contract.
        probabilities = np.asarray(self._model.predict_proba(x)) if self.has_proba else None
        return predictions, probabilities
