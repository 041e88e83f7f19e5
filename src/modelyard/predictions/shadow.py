"""The shadow copy: a request a traffic policy sampled, predicted again with the shadow version
once its answer was sent, and logged as a shadow prediction (`shadow_of` the primary) with how
it compared with the primary's.

Its errors never reach the caller: a copy the shadow refuses (inputs that do not fit it, a time
or memory budget) is logged as a failed shadow prediction; one that fails otherwise (the model
does not load) is only logged, as a warning. At most `Predictor.max_shadows_in_flight` run at
once per process.
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.background import BackgroundTask

from modelyard.auth.service import Caller
from modelyard.predictions.inputs import InvalidInput, check_feeds, rows_batch
from modelyard.predictions.log.record import PredictionRecord
from modelyard.predictions.predictor import (
    REFUSALS,
    Predictor,
    TensorOutcome,
    finite,
    jsonable,
    loggable_tensors,
    refusal_error,
    rows_of,
    timed,
)
from modelyard.predictions.targets import Target
from modelyard.serving.runtimes import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShadowCopy:
    """A request to predict again with the shadow version, after its answer was sent.

    `rows` are a native request's inputs (checked again against the shadow's features), `batch`
    a V2 request's tensor, `feeds` a network's named tensors (checked against the shadow's
    inputs); `primary` the answer's predictions (a network's first output), compared by label
    (classifiers) or by value.
    """

    target: Target
    caller: Caller
    protocol: str
    primary_id: uuid.UUID
    primary: np.ndarray
    by_label: bool
    rows: Any = None
    batch: np.ndarray | None = None
    feeds: dict[str, np.ndarray] | None = None


def shadow_task(predictor: Predictor, copy: ShadowCopy | None) -> BackgroundTask | None:
    """Return the task that starts the shadow prediction of a request once it is answered."""
    if copy is None:
        return None
    return BackgroundTask(predictor.start_shadow, functools.partial(run, predictor, copy))


async def run(predictor: Predictor, copy: ShadowCopy) -> None:
    """Predict a shadow copy and log it as a shadow prediction; its errors are only logged."""
    target = copy.target
    try:
        runtime = await predictor.runtime(target)
        if copy.feeds is not None:
            await _run_network(predictor, copy, copy.feeds, runtime)
            return
        if copy.rows is not None:
            batch = rows_batch(
                copy.rows, runtime=runtime, feature_names=target.feature_names,
                limits=predictor.limits,
            )  # fmt: skip
        else:
            assert copy.batch is not None  # noqa: S101 - one of the two, by construction
            batch = _fit_tensor(copy.batch, runtime)
        result, elapsed_ms = await timed(
            predictor.batcher.predict(target.version_id, runtime, batch)
        )
        predictions = result.predictions
        if not finite(predictions):
            raise InvalidInput("the model produced a value that is not a finite number")
    except REFUSALS as exc:
        _record(predictor, copy, error=refusal_error(exc), n_rows=0)
        return
    except Exception as exc:
        log.warning(
            "shadow_prediction_failed",
            extra={"model_id": str(target.model_id), "version": target.version,
                   "error": type(exc).__name__},
        )  # fmt: skip
        return
    agreed, abs_diff = compare(copy.primary, predictions, by_label=copy.by_label)
    outputs: dict[str, Any] = {"predictions": jsonable(predictions)}
    if result.probabilities is not None and finite(result.probabilities):
        outputs["probabilities"] = jsonable(result.probabilities)
    _record(
        predictor, copy, outputs=outputs, n_rows=len(batch), inference_time_ms=elapsed_ms,
        agreed_rows=agreed, abs_diff_sum=abs_diff,
    )  # fmt: skip


async def _run_network(
    predictor: Predictor, copy: ShadowCopy, feeds: dict[str, np.ndarray], runtime: Runtime
) -> None:
    """The shadow copy of a network's request: its first output compared by value."""
    target = copy.target
    try:
        if runtime.tensor_inputs is None:
            raise InvalidInput("the shadow version takes a table, not named tensors")
        check_feeds(feeds, runtime=runtime, limits=predictor.limits)
        rows = rows_of(feeds, runtime)
        result, elapsed_ms = await timed(
            predictor.batcher.run(target.version_id, runtime, feeds, rows)
        )
        if not all(finite(value) for value in result.outputs.values()):
            raise InvalidInput("the model produced a value that is not a finite number")
    except REFUSALS as exc:
        _record(predictor, copy, error=refusal_error(exc), n_rows=0)
        return
    first = result.outputs[runtime.tensor_outputs[0].name]
    _, abs_diff = compare(copy.primary, first, by_label=False)
    _record(
        predictor, copy, outputs=loggable_tensors(result.outputs), n_rows=rows,
        inference_time_ms=elapsed_ms, abs_diff_sum=abs_diff,
    )  # fmt: skip


def _record(
    predictor: Predictor,
    copy: ShadowCopy,
    *,
    n_rows: int,
    outputs: Any = None,
    error: str | None = None,
    inference_time_ms: float | None = None,
    agreed_rows: int | None = None,
    abs_diff_sum: float | None = None,
) -> None:
    predictor.log.record(
        PredictionRecord.of(
            copy.target,
            user_id=copy.caller.user.id,
            api_key_id=copy.caller.api_key_id,
            protocol=copy.protocol,
            error=error,
            # The primary prediction (`shadow_of`) holds the inputs: not stored twice.
            inputs=None,
            outputs=outputs,
            n_rows=n_rows,
            inference_time_ms=inference_time_ms,
            shadow_of=copy.primary_id,
            agreed_rows=agreed_rows,
            abs_diff_sum=abs_diff_sum,
        )
    )


def compare(
    primary: np.ndarray, shadow: np.ndarray, *, by_label: bool
) -> tuple[int | None, float | None]:
    """Compare a shadow's predictions with the primary's, row by row.

    By label (classifiers): the rows whose labels are equal, as (count, None). By value
    (regressors): the rows' absolute differences (averaged over a row's outputs) summed, as
    (None, sum). Predictions of another row count or shape, or non-numeric values compared by
    value, count as no row agreeing, or are not compared (None, None).
    """
    n = len(primary)
    if len(shadow) != n or n == 0:
        return (0, None) if by_label else (None, None)
    left, right = primary.reshape(n, -1), shadow.reshape(n, -1)
    if left.shape != right.shape:
        return (0, None) if by_label else (None, None)
    if by_label:
        if left.dtype.kind in "biuf" and right.dtype.kind in "biuf":
            same = left == right
        else:
            # Labels of other kinds (strings) compare as text, as the answers show them.
            same = left.astype(str) == right.astype(str)
        return int(np.count_nonzero(same.all(axis=1))), None
    if left.dtype.kind not in "biuf" or right.dtype.kind not in "biuf":
        return None, None
    diff = np.abs(left.astype(np.float64) - right.astype(np.float64)).mean(axis=1)
    return None, float(diff.sum())


def _fit_tensor(batch: np.ndarray, runtime: Runtime) -> np.ndarray:
    """Return a V2 request's tensor as the shadow's runtime takes it.

    Raises:
        InvalidInput: the shadow expects another number of features.
    """
    if batch.ndim != 2 or (runtime.n_features is not None and batch.shape[1] != runtime.n_features):
        raise InvalidInput(f"the shadow version expects {runtime.n_features} features per row")
    if batch.dtype != runtime.input_dtype and batch.dtype.kind in "biuf":
        return batch.astype(runtime.input_dtype)
    return batch


def network_copy(
    shadow: Target | None,
    caller: Caller,
    protocol: str,
    outcome: TensorOutcome,
    feeds: dict[str, np.ndarray],
    runtime: Runtime,
) -> ShadowCopy | None:
    """The shadow copy of a network's request (None without a shadow): its first output is
    compared by value."""
    if shadow is None:
        return None
    primary = outcome.outputs[runtime.tensor_outputs[0].name]
    return ShadowCopy(shadow, caller, protocol, outcome.prediction_id, primary, False, feeds=feeds)
