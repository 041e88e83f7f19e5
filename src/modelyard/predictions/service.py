"""The prediction path both protocols share: resolve a version, check inputs, predict, log."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.artifacts import ArtifactStore
from modelyard.auth.service import Caller
from modelyard.db.tables import ModelAlias, ModelVersion, RegisteredModel, User
from modelyard.db.types import utcnow, uuid7
from modelyard.epochs import Epoch
from modelyard.errors import Conflict, NotFound, Unprocessable
from modelyard.hotcache import EpochCache
from modelyard.observability.metrics import Metrics
from modelyard.outage import OutageCache
from modelyard.predictions.log import PredictionLog, PredictionRecord
from modelyard.registry import service as registry_service
from modelyard.registry.schemas import ModelStatus, Stage
from modelyard.serving.batching import Batcher
from modelyard.serving.cache import ModelCache
from modelyard.serving.formats import Framework, ModelFormat
from modelyard.serving.runtimes import Runtime, fetch_runtime
from modelyard.serving.runtimes.base import InferenceLimitExceeded
from modelyard.serving.runtimes.onnx import DEFAULT_RUN_TIMEOUT_SECONDS

log = logging.getLogger(__name__)


class NotServable(Conflict):
    """The model or version exists but is archived: it is never served."""


class NoServableVersion(NotFound):
    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} has no version that can be served")


class InvalidInput(Unprocessable):
    """Inputs that do not fit the model; the message says what is wrong."""

    type = "invalid-input"


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved model version: what serving needs, detached from any database session."""

    model_id: uuid.UUID
    model_name: str
    owner_id: uuid.UUID
    version_id: uuid.UUID
    version: int
    stage: str
    framework: Framework
    format: ModelFormat
    task_type: str | None
    storage_key: str
    sha256: str
    feature_names: list[str] | None

    @classmethod
    def of(cls, model: RegisteredModel, version: ModelVersion) -> Target:
        features = (version.input_schema or {}).get("features")
        # Plain UUIDs: asyncpg hands out a subclass that orjson will not serialise.
        return cls(
            model_id=uuid.UUID(int=model.id.int),
            model_name=model.name,
            owner_id=uuid.UUID(int=model.owner_id.int),
            version_id=uuid.UUID(int=version.id.int),
            version=version.version,
            stage=version.stage,
            framework=Framework(version.framework),
            format=ModelFormat(version.format),
            task_type=version.task_type,
            storage_key=version.storage_key,
            sha256=version.sha256,
            feature_names=[f["name"] for f in features] if features else None,
        )


async def resolve_target(
    db: AsyncSession,
    user: User,
    ref: str,
    *,
    version: int | None = None,
    alias: str | None = None,
    stage: Stage | None = None,
) -> Target:
    """Resolve `{model}` plus at most one of version, alias or stage to a servable version.

    Without a selector: the production version, else the newest version not archived.

    Raises:
        ModelNotFound, VersionNotFound, AliasNotFound, NoServableVersion: nothing matches.
        NotServable: the model or the chosen version is archived.
        Unprocessable: more than one selector, or `stage=archived`.
    """
    if sum(s is not None for s in (version, alias, stage)) > 1:
        raise Unprocessable("give at most one of version, alias and stage")
    if stage == Stage.ARCHIVED:
        raise Unprocessable("archived versions are never served")
    model = await registry_service.get_model(db, user, ref)
    if model.status == ModelStatus.ARCHIVED:
        raise NotServable(f"model {model.name!r} is archived")
    row: ModelVersion | None
    if version is not None:
        row = await registry_service.get_version(db, model, version)
    elif alias is not None:
        row = await db.scalar(
            select(ModelVersion)
            .join(ModelAlias, ModelAlias.version_id == ModelVersion.id)
            .where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
        )
        if row is None:
            raise registry_service.AliasNotFound(model.name, alias)
    else:
        query = select(ModelVersion).where(ModelVersion.model_id == model.id)
        if stage is not None:
            query = query.where(ModelVersion.stage == stage)
        else:
            # Production first, then the newest of the rest; archived never.
            query = query.where(ModelVersion.stage != Stage.ARCHIVED).order_by(
                (ModelVersion.stage == Stage.PRODUCTION).desc()
            )
        row = await db.scalar(query.order_by(ModelVersion.version.desc()).limit(1))
        if row is None:
            raise NoServableVersion(model.name)
    if row.stage == Stage.ARCHIVED:
        raise NotServable(f"version {row.version} of model {model.name!r} is archived")
    return Target.of(model, row)


def target_key(
    user_id: uuid.UUID,
    ref: str,
    *,
    version: int | None = None,
    alias: str | None = None,
    stage: Stage | None = None,
) -> Hashable:
    """The key under which `resolve_cached` remembers a resolution."""
    return ("target", user_id, ref, version, alias, stage)


async def resolve_cached(
    db: AsyncSession,
    user: User,
    ref: str,
    *,
    targets: EpochCache[Hashable, Target],
    outage: OutageCache[Hashable, Any],
    version: int | None = None,
    alias: str | None = None,
    stage: Stage | None = None,
) -> Target:
    """`resolve_target` for the hot path: remembered until the registry changes (epochs) or for
    a few seconds, and answered from the last success while the database is down."""
    key = target_key(user.id, ref, version=version, alias=alias, stage=stage)
    return await targets.fill(
        key,
        lambda: resolve_fresh(db, user, ref, outage, version=version, alias=alias, stage=stage),
    )


async def resolve_fresh(
    db: AsyncSession,
    user: User,
    ref: str,
    outage: OutageCache[Hashable, Any],
    *,
    version: int | None = None,
    alias: str | None = None,
    stage: Stage | None = None,
) -> tuple[Target, float | None]:
    """`resolve_target`, or while the database is down the last success; for `EpochCache.fill`."""
    key = target_key(user.id, ref, version=version, alias=alias, stage=stage)
    target, recalled = await outage.call(
        key,
        lambda: resolve_target(db, user, ref, version=version, alias=alias, stage=stage),
        epoch=Epoch.REGISTRY,
    )
    # A recalled answer serves this request only: cached, it would outlive the outage.
    return target, 0.0 if recalled else None


# --- inputs ---------------------------------------------------------------------------------------

# Most names (and characters of each) an error message lists; it says how many more there are.
LISTED_NAMES = 5
NAME_MAX_CHARS = 64


def input_matrix(
    inputs: Any, *, runtime: Runtime, target: Target, max_rows: int, max_elements: int
) -> np.ndarray:
    """Turn `inputs` (rows of numbers, or records by feature name) into the model's 2D batch.

    Sizes are checked first, from lengths alone (rows, the first row's width, a record's key
    count): a request that cannot fit is refused before any per-value work, and every message
    lists a bounded number of names.

    Raises:
        InvalidInput: saying what is wrong: not a non-empty list, too many rows or values, mixed
            or ragged rows, wrong feature count, missing/unknown names, non-numeric values.
    """
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs must be a non-empty list of rows or of records")
    if len(inputs) > max_rows:
        raise InvalidInput(f"{len(inputs)} rows is more than the {max_rows} allowed per request")
    width = runtime.n_features or (len(target.feature_names) if target.feature_names else None)
    first = inputs[0]
    if isinstance(first, dict):
        names = target.feature_names or runtime.feature_names
        _check_size(len(inputs), len(names) if names else len(first), max_elements)
        rows = _records_to_rows(inputs, names=names)
    elif isinstance(first, list):
        if width is not None and len(first) != width:
            raise InvalidInput(f"the model takes {width} features; inputs[0] has {len(first)}")
        _check_size(len(inputs), len(first), max_elements)
        rows = inputs
    else:
        raise InvalidInput("inputs[0] must be a list of feature values or an object of features")
    try:
        matrix = np.array(rows)
    except (ValueError, OverflowError) as exc:
        raise InvalidInput(_ragged_reason(rows)) from exc
    if matrix.ndim != 2:
        raise InvalidInput(_ragged_reason(rows))
    if matrix.dtype.kind not in "iuf":
        raise InvalidInput(_non_numeric_reason(rows))
    if width is not None and matrix.shape[1] != width:
        raise InvalidInput(f"the model takes {width} features; the rows have {matrix.shape[1]}")
    return np.ascontiguousarray(matrix, dtype=runtime.input_dtype)


def _check_size(rows: int, width: int, max_elements: int) -> None:
    if rows * width > max_elements:
        raise InvalidInput(
            f"{rows} rows of {width} values is {rows * width} values, more than the "
            f"{max_elements} allowed per request"
        )


def _records_to_rows(records: list[Any], *, names: list[str] | None) -> list[list[Any]]:
    if names is None:
        raise InvalidInput("this model does not name its features: send rows of values")
    wanted = set(names)
    rows = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InvalidInput(f"inputs[{i}] is not a record like inputs[0]")
        if record.keys() != wanted:
            raise InvalidInput(f"inputs[{i}]: " + _key_mismatch(record, names, wanted))
        rows.append([record[n] for n in names])
    return rows


def _key_mismatch(record: dict[str, Any], names: list[str], wanted: set[str]) -> str:
    """Say which names a record misses and which it has unknown, listing a few of each.

    O(features + LISTED_NAMES), whatever the record's size: a record with a million unknown
    keys is described by its first few and a count, never by sorting or joining them all.
    """
    missing = [name for name in names if name not in record]
    # len(record) = known + unknown keys, and the known ones are len(names) - len(missing).
    n_unknown = len(record) - (len(names) - len(missing))
    unknown = list(itertools.islice((key for key in record if key not in wanted), LISTED_NAMES))
    parts = []
    if missing:
        parts.append("missing " + _listed(missing[:LISTED_NAMES], len(missing)))
    if n_unknown:
        parts.append("unknown " + _listed(unknown, n_unknown))
    return "; ".join(parts)


def _listed(names: list[str], total: int) -> str:
    shown = [n if len(n) <= NAME_MAX_CHARS else n[:NAME_MAX_CHARS] + "..." for n in names]
    more = total - len(names)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _ragged_reason(rows: list[Any]) -> str:
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return f"inputs[{i}] is not a list like inputs[0]"
        if len(row) != len(rows[0]):
            return f"inputs[{i}] has {len(row)} values; inputs[0] has {len(rows[0])}"
        for j, value in enumerate(row):
            if isinstance(value, list | dict):
                return f"inputs[{i}][{j}] is not a number"
    return "inputs must be rows of numbers of one length"


def _non_numeric_reason(rows: list[Any]) -> str:
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"inputs[{i}][{j}] is not a number: {type(value).__name__}"
    return "inputs must be numbers"


# --- predicting -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    prediction_id: uuid.UUID
    predictions: np.ndarray
    probabilities: np.ndarray | None
    classes: list[Any] | None
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
        run_timeout_seconds: float = DEFAULT_RUN_TIMEOUT_SECONDS,
    ) -> None:
        self.run_timeout_seconds = run_timeout_seconds
        self.store = store
        self.cache = cache
        self.batcher = batcher
        self.log = log
        self.metrics = metrics

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

    async def predict(
        self,
        target: Target,
        runtime: Runtime,
        matrix: np.ndarray,
        *,
        caller: Caller,
        protocol: str,
        inputs: Any,
    ) -> Outcome:
        """Predict `matrix` with `runtime` (batched with concurrent calls) and log it.

        Raises:
            InvalidInput: the model produced a non-finite value (logged as a failure).
        """
        prediction_id = uuid7()
        started = time.perf_counter()
        try:
            result = await self.batcher.predict(target.version_id, runtime, matrix)
        except (ValueError, TypeError) as exc:
            # The model refused these values (a library check we did not anticipate).
            error = "the model could not predict these inputs"
            self.record_failure(
                target, caller=caller, protocol=protocol, error=f"{error}: {type(exc).__name__}",
                inputs=inputs, n_rows=len(matrix), prediction_id=prediction_id,
            )  # fmt: skip
            raise InvalidInput(error) from exc
        except InferenceLimitExceeded as exc:
            self.record_failure(
                target, caller=caller, protocol=protocol, error=exc.detail, inputs=inputs,
                n_rows=len(matrix), prediction_id=prediction_id,
            )  # fmt: skip
            raise
        elapsed_ms = (time.perf_counter() - started) * 1000
        predictions, probabilities = result.predictions, result.probabilities
        if not _finite(predictions) or (probabilities is not None and not _finite(probabilities)):
            error = "the model produced a value that is not a finite number"
            self.record_failure(
                target, caller=caller, protocol=protocol, error=error, inputs=inputs,
                n_rows=len(matrix), prediction_id=prediction_id,
            )  # fmt: skip
            raise InvalidInput(error)
        outputs: dict[str, Any] = {"predictions": jsonable(predictions)}
        if probabilities is not None:
            outputs["probabilities"] = jsonable(probabilities)
        self._record(
            prediction_id, target, caller, protocol, inputs=inputs, outputs=outputs,
            n_rows=len(matrix), inference_time_ms=elapsed_ms,
        )  # fmt: skip
        self.metrics.prediction(target.model_id, target.version, protocol, "success")
        return Outcome(
            prediction_id=prediction_id,
            predictions=predictions,
            probabilities=probabilities,
            classes=runtime.classes if probabilities is not None else None,
            inference_time_ms=elapsed_ms,
        )

    def _record(
        self,
        prediction_id: uuid.UUID,
        target: Target,
        caller: Caller,
        protocol: str,
        *,
        inputs: Any,
        n_rows: int,
        outputs: Any = None,
        error: str | None = None,
        inference_time_ms: float | None = None,
    ) -> None:
        self.log.record(
            PredictionRecord(
                id=prediction_id,
                model_id=target.model_id,
                version_id=target.version_id,
                version=target.version,
                owner_id=target.owner_id,
                user_id=caller.user.id,
                api_key_id=caller.api_key_id,
                protocol=protocol,
                status="success" if error is None else "error",
                error=error,
                inputs=inputs,
                outputs=outputs,
                n_rows=n_rows,
                inference_time_ms=inference_time_ms,
                created_at=utcnow(),
            )
        )

    def record_failure(
        self,
        target: Target,
        *,
        caller: Caller,
        protocol: str,
        error: str,
        inputs: Any,
        n_rows: int = 0,
        prediction_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Log a prediction that failed after its version was resolved."""
        prediction_id = prediction_id or uuid7()
        self._record(
            prediction_id, target, caller, protocol, inputs=inputs, error=error, n_rows=n_rows
        )
        self.metrics.prediction(target.model_id, target.version, protocol, "error")
        return prediction_id


def jsonable(values: np.ndarray) -> Any:
    """Return an array for orjson: numeric ones as they are (fast, but contiguous only), others
    as lists."""
    if values.dtype.kind in "biuf":
        return np.ascontiguousarray(values)
    return values.tolist()


def _finite(values: np.ndarray) -> bool:
    return values.dtype.kind not in "fc" or bool(np.isfinite(values).all())
