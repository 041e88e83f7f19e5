"""One prediction on a resolved version: admit the caller, load the model, predict, log.

A request refused once its version is known is logged as a failed prediction, in one place
(`Attempt`); a success is logged by `Predictor.predict` or `Predictor.predict_tensors`. The
protocols (`rest`, `v2`) decode and encode around these; `pipeline` runs the steps in order.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import numpy as np

from modelyard.artifacts import ArtifactStore
from modelyard.auth.service import Caller
from modelyard.errors import BadRequest
from modelyard.observability import tracing
from modelyard.observability.metrics import Metrics
from modelyard.predictions import oip
from modelyard.predictions.inputs import InputLimits, InvalidInput
from modelyard.predictions.log.record import PredictionRecord
from modelyard.predictions.log.writer import PredictionLog
from modelyard.predictions.targets import Target
from modelyard.ratelimit import RateLimiter
from modelyard.serving.batching import Batcher
from modelyard.serving.cache import ModelCache
from modelyard.serving.runtimes import Runtime, fetch_runtime
from modelyard.serving.runtimes.base import InferenceLimitExceeded
from modelyard.serving.runtimes.onnx import DEFAULT_RUN_TIMEOUT_SECONDS

RATE_WINDOW_SECONDS = 60
# Shadow copies predicted at once per process; past it a sampled copy is dropped (and counted).
DEFAULT_MAX_SHADOWS_IN_FLIGHT = 16

R = TypeVar("R")


class ModelCouldNotPredict(InvalidInput):
    """The model refused the values: a library check the input checks did not anticipate."""

    def __init__(self, exc: Exception) -> None:
        super().__init__("the model could not predict these inputs")
        # The log says which exception; the client is not told the library's internals.
        self.logged = f"{self.detail}: {type(exc).__name__}"


# What refuses a request once its version is resolved; each is logged as a failed prediction.
# (Loading the model can fail too, with other errors: that is the server's failure, not the
# request's, and it is not logged as a prediction.)
REFUSALS = (BadRequest, InvalidInput, InferenceLimitExceeded)


def refusal_error(exc: BadRequest | InvalidInput | InferenceLimitExceeded) -> str:
    """The error a refusal is logged with."""
    return exc.logged if isinstance(exc, ModelCouldNotPredict) else exc.detail


async def timed(call: Awaitable[R]) -> tuple[R, float]:
    """Await a model call; return its result and how long it took (ms).

    Raises:
        ModelCouldNotPredict: the library refused the values (ValueError, TypeError).
    """
    started = time.perf_counter()
    try:
        result = await call
    except (ValueError, TypeError) as exc:
        raise ModelCouldNotPredict(exc) from exc
    return result, (time.perf_counter() - started) * 1000


@dataclass(frozen=True, slots=True)
class Outcome:
    prediction_id: uuid.UUID
    predictions: np.ndarray
    probabilities: np.ndarray | None
    classes: list[Any] | None
    inference_time_ms: float


@dataclass(frozen=True, slots=True)
class TensorOutcome:
    prediction_id: uuid.UUID
    outputs: dict[str, np.ndarray]
    inference_time_ms: float


class Predictor:
    """Serves predictions: the model cache, the batcher and the prediction log, together."""

    def __init__(
        self,
        *,
        store: ArtifactStore,
        cache: ModelCache,
        batcher: Batcher,
        log: PredictionLog,
        metrics: Metrics,
        limits: InputLimits | None = None,
        run_timeout_seconds: float = DEFAULT_RUN_TIMEOUT_SECONDS,
        rate_limiter: RateLimiter | None = None,
        rate_limit_per_minute: int = 0,
        rng: random.Random | None = None,
        max_shadows_in_flight: int = DEFAULT_MAX_SHADOWS_IN_FLIGHT,
    ) -> None:
        # Draws of traffic splits and shadow samples (not secrets: a seed makes tests exact).
        self.rng = rng or random.Random()  # noqa: S311 - routing, not security
        self.max_shadows_in_flight = max_shadows_in_flight
        self._shadows: set[asyncio.Task[None]] = set()
        self.run_timeout_seconds = run_timeout_seconds
        self.rate_limiter = rate_limiter
        self.rate_limit_per_minute = rate_limit_per_minute
        self.store = store
        self.cache = cache
        self.batcher = batcher
        self.log = log
        self.metrics = metrics
        self.limits = limits or InputLimits()

    async def admit(self, caller: Caller) -> None:
        """Count one prediction against the caller's limit (both protocols, every replica).

        Raises:
            RateLimited: past the limit.
        """
        if self.rate_limiter is not None and self.rate_limit_per_minute > 0:
            # Per API key (else user); `take` spends permits reserved from Redis in blocks.
            await self.rate_limiter.take(
                f"predict:{caller.api_key_id or caller.user.id}",
                limit=self.rate_limit_per_minute,
                window_seconds=RATE_WINDOW_SECONDS,
            )

    async def runtime(self, target: Target) -> Runtime:
        """Return the loaded runtime of `target`, loading it once per process."""
        runtime = self.cache.peek(target.version_id)
        if runtime is not None:
            self.metrics.cache_hits.inc()
            return runtime
        return await self.cache.get(
            target.version_id,
            lambda: fetch_runtime(
                self.store,
                key=target.storage_key,
                sha256=target.sha256,
                fmt=target.format,
                metrics=self.metrics,
                run_timeout_seconds=self.run_timeout_seconds,
            ),
        )

    # --- shadow predictions in flight (what they do: `predictions.shadow`) ------------------

    async def start_shadow(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start a shadow prediction, or drop it (counted) with `max_shadows_in_flight` running.

        Only schedules: the request's ASGI call ends at once, whatever the shadow costs.
        """
        if len(self._shadows) >= self.max_shadows_in_flight:
            self.metrics.shadow_dropped.inc()
            return
        task = asyncio.create_task(run(), name="shadow-prediction")
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def drain_shadows(self) -> None:
        """Wait until every shadow prediction started so far has finished (and is logged)."""
        while self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop the shadow predictions in flight (their copies are dropped, never logged)."""
        for task in list(self._shadows):
            task.cancel()
        await asyncio.gather(*self._shadows, return_exceptions=True)

    # --- one request ------------------------------------------------------------------------

    def attempt(self, target: Target, *, caller: Caller, protocol: str) -> Attempt:
        """Return the context of one request on `target`: a refusal raised in it is logged."""
        return Attempt(self, target, caller, protocol)

    async def predict(
        self,
        target: Target,
        runtime: Runtime,
        batch: np.ndarray,
        *,
        caller: Caller,
        protocol: str,
        inputs: Any,
    ) -> Outcome:
        """Predict `batch` with `runtime` (batched with concurrent calls) and log the success.

        Call it inside `attempt`, which logs the failures.

        Raises:
            ModelCouldNotPredict, InvalidInput: the model refused the values, or produced a
                value that is not a finite number.
            InferenceLimitExceeded: the call passed its time or memory budget.
        """
        result, elapsed_ms = await self._traced(
            target, protocol, len(batch), self.batcher.predict(target.version_id, runtime, batch)
        )
        predictions, probabilities = result.predictions, result.probabilities
        if not finite(predictions) or (probabilities is not None and not finite(probabilities)):
            raise InvalidInput("the model produced a value that is not a finite number")
        outputs: dict[str, Any] = {"predictions": jsonable(predictions)}
        if probabilities is not None:
            outputs["probabilities"] = jsonable(probabilities)
        prediction_id = self._record(
            target, caller, protocol, inputs=inputs, outputs=outputs,
            n_rows=len(batch), inference_time_ms=elapsed_ms,
        )  # fmt: skip
        return Outcome(
            prediction_id=prediction_id,
            predictions=predictions,
            probabilities=probabilities,
            classes=runtime.classes if probabilities is not None else None,
            inference_time_ms=elapsed_ms,
        )

    async def predict_tensors(
        self,
        target: Target,
        runtime: Runtime,
        feeds: dict[str, np.ndarray],
        *,
        caller: Caller,
        protocol: str,
    ) -> TensorOutcome:
        """Run a network on its named inputs (stacked with concurrent calls) and log the success.

        Call it inside `attempt`, which logs the failures.

        Raises:
            ModelCouldNotPredict, InvalidInput: the model refused the values, or produced a
                value that is not a finite number.
            InferenceLimitExceeded: the call passed its rows, time or memory budget.
        """
        rows = rows_of(feeds, runtime)
        result, elapsed_ms = await self._traced(
            target, protocol, rows, self.batcher.run(target.version_id, runtime, feeds, rows)
        )
        if not all(finite(value) for value in result.outputs.values()):
            raise InvalidInput("the model produced a value that is not a finite number")
        prediction_id = self._record(
            target, caller, protocol, inputs=loggable_tensors(feeds),
            outputs=loggable_tensors(result.outputs), n_rows=rows, inference_time_ms=elapsed_ms,
        )  # fmt: skip
        return TensorOutcome(prediction_id, result.outputs, elapsed_ms)

    async def _traced(
        self, target: Target, protocol: str, rows: int, call: Awaitable[R]
    ) -> tuple[R, float]:
        """`timed`, in a tracing span that names the model, the protocol and the rows."""
        with tracing.span("predict") as span:
            if span is not None:
                span.set_attributes(_span_attributes(target, protocol, rows))
            return await timed(call)

    def record_failure(
        self,
        target: Target,
        *,
        caller: Caller,
        protocol: str,
        error: str,
        inputs: Any,
        n_rows: int = 0,
    ) -> uuid.UUID:
        """Log a prediction that failed after its version was resolved."""
        return self._record(target, caller, protocol, inputs=inputs, error=error, n_rows=n_rows)

    def _record(
        self,
        target: Target,
        caller: Caller,
        protocol: str,
        *,
        inputs: Any,
        n_rows: int,
        outputs: Any = None,
        error: str | None = None,
        inference_time_ms: float | None = None,
    ) -> uuid.UUID:
        """Log one call (a success without `error`) and count it; return its prediction id."""
        record = PredictionRecord.of(
            target, user_id=caller.user.id, api_key_id=caller.api_key_id, protocol=protocol,
            error=error, inputs=inputs, outputs=outputs, n_rows=n_rows,
            inference_time_ms=inference_time_ms,
        )  # fmt: skip
        self.log.record(record)
        self.metrics.prediction(target.model_id, target.version, protocol, record.status)
        return record.id


class Attempt:
    """One predict request on a resolved version: the one place its refusal is logged.

    A refusal (`REFUSALS`) raised inside `with predictor.attempt(...)` is logged as a failed
    prediction, with the `inputs` and `n_rows` known by then, and goes on to the caller.
    """

    __slots__ = ("caller", "inputs", "n_rows", "predictor", "protocol", "target")

    def __init__(self, predictor: Predictor, target: Target, caller: Caller, protocol: str) -> None:
        self.predictor = predictor
        self.target = target
        self.caller = caller
        self.protocol = protocol
        self.inputs: Any = None
        self.n_rows = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _: TracebackType | None
    ) -> None:
        if isinstance(exc, REFUSALS):
            self.predictor.record_failure(
                self.target, caller=self.caller, protocol=self.protocol, error=refusal_error(exc),
                inputs=self.inputs, n_rows=self.n_rows,
            )  # fmt: skip


# Tensors of at most this many values are logged whole; larger ones by datatype and shape only
# (an image's 150,528 values would cost more to serialise than its prediction).
LOGGED_TENSOR_VALUES = 4096


def loggable_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Return a network's named tensors as the prediction log keeps them, bounded."""
    logged: dict[str, Any] = {}
    for name, value in tensors.items():
        if value.size <= LOGGED_TENSOR_VALUES:
            logged[name] = jsonable(value)
        else:
            logged[name] = {"datatype": oip.to_datatype(value.dtype), "shape": list(value.shape)}
    return logged


def loggable(inputs: Any) -> Any:
    """Return refused inputs as they may be logged: bounded, so a huge bad body stays small."""
    if isinstance(inputs, list) and len(inputs) > 100:
        return inputs[:100]
    return inputs


def rows_of(feeds: Mapping[str, np.ndarray], runtime: Runtime) -> int:
    """The rows of a network call: its batch dimension, or one call of one row without."""
    if not runtime.has_batch_axis:
        return 1
    first = next(iter(feeds.values()))
    return len(first) if first.ndim else 1


def jsonable(values: np.ndarray) -> Any:
    """Return an array for orjson: numeric ones as they are (fast, but contiguous only), others
    as lists."""
    if values.dtype.kind in "biuf":
        return np.ascontiguousarray(values)
    return values.tolist()


def finite(values: np.ndarray) -> bool:
    return values.dtype.kind not in "fc" or bool(np.isfinite(values).all())


def _span_attributes(target: Target, protocol: str, rows: int) -> dict[str, Any]:
    return {
        "modelyard.model": target.model_name,
        "modelyard.model_id": str(target.model_id),
        "modelyard.version": target.version,
        "modelyard.protocol": protocol,
        "modelyard.rows": rows,
    }
