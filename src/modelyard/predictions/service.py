"""The predict use case, both protocols: resolve a version, admit, check inputs, predict, log,
answer.

Routes and the fast path (`predictions.fastpath`) parse the request, resolve and call one of
`predict_rest` and `predict_v2`; they get the encoded answer back, or a domain error to render.
A request refused once its version is known is logged as a failed prediction, in one place
(`Attempt`).

A request naming no version resolves with the model's traffic policy (`Target.traffic`, see
`predictions.traffic`): the caller picks the route with `Predictor.route`, and a sampled shadow
copy runs from the answer's background task, after the answer was sent (`Predictor.shadow_copy`).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import hashlib
import itertools
import logging
import random
import re
import time
import uuid
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, Self

import numpy as np
import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.background import BackgroundTask

from modelyard.artifacts import ArtifactStore
from modelyard.auth.service import Caller
from modelyard.changes.epochs import Epoch
from modelyard.changes.hotcache import EpochCache
from modelyard.changes.outage import OutageCache
from modelyard.db.tables import ModelAlias, ModelVersion, RegisteredModel, TrafficPolicy, User
from modelyard.db.types import utcnow, uuid7
from modelyard.errors import BadRequest, Conflict, NotFound, Unprocessable
from modelyard.observability import tracing
from modelyard.observability.metrics import Metrics
from modelyard.predictions import oip
from modelyard.predictions.inputs import (
    InputLimits,
    InvalidInput,
    check_feeds,
    check_network_header,
    check_tensor,
    rest_feeds,
    rows_batch,
    tensor_batch,
)
from modelyard.predictions.log import PredictionLog, PredictionRecord
from modelyard.ratelimit import RateLimiter
from modelyard.registry import service as registry_service
from modelyard.registry.schemas import ModelStatus, Stage
from modelyard.serving.batching import Batcher
from modelyard.serving.cache import ModelCache
from modelyard.serving.formats import FRAMEWORK_OF, Framework, ModelFormat
from modelyard.serving.runtimes import Runtime, fetch_runtime
from modelyard.serving.runtimes.base import InferenceLimitExceeded, TensorSpec
from modelyard.serving.runtimes.onnx import DEFAULT_RUN_TIMEOUT_SECONDS

log = logging.getLogger(__name__)

RATE_WINDOW_SECONDS = 60
# The request header whose value makes a traffic split sticky: the same key, the same route.
ROUTING_KEY_HEADER = "x-routing-key"
# Shadow copies predicted at once per process; past it a sampled copy is dropped (and counted).
DEFAULT_MAX_SHADOWS_IN_FLIGHT = 16


class NotServable(Conflict):
    """The model or version exists but is archived: it is never served."""


class NoServableVersion(NotFound):
    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} has no version that can be served")


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
    # The model's traffic policy, resolved; only on the target of requests naming no version.
    traffic: Traffic | None = None

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
            framework=FRAMEWORK_OF[ModelFormat(version.format)],
            format=ModelFormat(version.format),
            task_type=version.task_type,
            storage_key=version.storage_key,
            sha256=version.sha256,
            feature_names=[f["name"] for f in features] if features else None,
        )


@dataclass(frozen=True, slots=True)
class Traffic:
    """A model's traffic policy as served: the routes' versions and the shadow, resolved.

    Route `i` takes the draws in [bounds[i-1], bounds[i]) of [0, total): cumulative weights.
    """

    routes: tuple[Target, ...]
    bounds: tuple[int, ...]
    shadow: Target | None
    sample_rate: float

    @property
    def total(self) -> int:
        return self.bounds[-1]


@dataclass(frozen=True, slots=True)
class VersionRef:
    """A version named by reference: a number, an alias, a stage, or (all None) the newest."""

    version: int | None = None
    alias: str | None = None
    stage: Stage | None = None


LATEST = "latest"
_VERSION_REF = re.compile(r"v([1-9][0-9]{0,9})")


def parse_ref(ref: str) -> VersionRef:
    """Read a reference as traffic policies write them: `v<N>`, `latest`, a stage, an alias.

    A stage name wins over an alias of the same name (aliases cannot be `latest` or `v<N>`).
    """
    if match := _VERSION_REF.fullmatch(ref):
        return VersionRef(version=int(match[1]))
    if ref == LATEST:
        return VersionRef()
    if ref in Stage.__members__.values():
        return VersionRef(stage=Stage(ref))
    return VersionRef(alias=ref)


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
    return await resolve_on(db, model, version=version, alias=alias, stage=stage)


async def resolve_on(
    db: AsyncSession,
    model: RegisteredModel,
    *,
    version: int | None = None,
    alias: str | None = None,
    stage: Stage | None = None,
    latest: bool = False,
) -> Target:
    """Resolve one selector (or none) on a loaded model; `latest` skips the production-first
    default (the newest version not archived).

    Raises:
        As `resolve_target`.
    """
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
        elif latest:
            query = query.where(ModelVersion.stage != Stage.ARCHIVED)
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


async def resolve_ref(db: AsyncSession, model: RegisteredModel, ref: str) -> Target | None:
    """Resolve a policy's reference (`parse_ref`) on `model`; None if nothing servable matches."""
    parsed = parse_ref(ref)
    if parsed.stage == Stage.ARCHIVED:
        return None
    try:
        return await resolve_on(
            db,
            model,
            version=parsed.version,
            alias=parsed.alias,
            stage=parsed.stage,
            latest=ref == LATEST,
        )
    except (NotFound, NotServable):
        return None


async def resolve_traffic(db: AsyncSession, model: RegisteredModel) -> Traffic | None:
    """Return the model's traffic policy with its references resolved, or None without one.

    A route whose target resolves to nothing servable now (an alias removed, an archived
    version, a stage without a version) is left out; with no route left, there is no policy.
    A shadow that resolves to nothing, or to the version a route chose, is not run.
    """
    policy = await db.get(TrafficPolicy, model.id)
    if policy is None:
        return None
    routes: list[Target] = []
    weights: list[int] = []
    for route in policy.routes:
        weight = int(route["weight"])
        target = await resolve_ref(db, model, route["target"]) if weight > 0 else None
        if target is not None:
            routes.append(target)
            weights.append(weight)
    if not routes:
        return None
    shadow = None
    sample_rate = 0.0
    if policy.shadow is not None:
        shadow = await resolve_ref(db, model, policy.shadow["target"])
        sample_rate = float(policy.shadow["sample_rate"])
    return Traffic(
        routes=tuple(routes),
        bounds=tuple(itertools.accumulate(weights)),
        shadow=shadow,
        sample_rate=sample_rate,
    )


async def resolve_serving(
    db: AsyncSession,
    user: User,
    ref: str,
    *,
    version: int | None = None,
    alias: str | None = None,
    stage: Stage | None = None,
) -> Target:
    """`resolve_target` for a predict request: one naming no version carries the model's
    traffic policy too (`Target.traffic`), so that a cached resolution holds both."""
    if version is not None or alias is not None or stage is not None:
        return await resolve_target(db, user, ref, version=version, alias=alias, stage=stage)
    model = await registry_service.get_model(db, user, ref)
    target = await resolve_on(db, model)
    traffic = await resolve_traffic(db, model)
    return target if traffic is None else dataclasses.replace(target, traffic=traffic)


def sticky_point(model_id: uuid.UUID, routing_key: str, total: int) -> int:
    """Return the draw in [0, total) that a routing key always makes on a model's split.

    A keyed BLAKE2b of the key: stable across processes, replicas and restarts (unlike
    `hash()`), and spread evenly over the draws.
    """
    digest = hashlib.blake2b(routing_key.encode(), digest_size=8, key=model_id.bytes).digest()
    return int.from_bytes(digest, "big") % total


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
    """`resolve_serving` for the hot path: remembered until the registry changes (epochs; a
    traffic policy change announces one too) or for a few seconds, and answered from the last
    success while the database is down."""
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
    """`resolve_serving`, or while the database is down the last success; for `EpochCache.fill`."""
    key = target_key(user.id, ref, version=version, alias=alias, stage=stage)
    target, recalled = await outage.call(
        key,
        lambda: resolve_serving(db, user, ref, version=version, alias=alias, stage=stage),
        epoch=Epoch.REGISTRY,
    )
    # A recalled answer serves this request only: cached, it would outlive the outage.
    return target, 0.0 if recalled else None


# --- predicting -----------------------------------------------------------------------------------


class InvalidInferenceRequest(BadRequest):
    """A V2 inference request the protocol refuses (400, `{"error": ...}` under `/v2`)."""

    type = "invalid-inference-request"


class ModelCouldNotPredict(InvalidInput):
    """The model refused the values: a library check the input checks did not anticipate."""

    def __init__(self, exc: Exception) -> None:
        super().__init__("the model could not predict these inputs")
        # The log says which exception; the client is not told the library's internals.
        self.logged = f"{self.detail}: {type(exc).__name__}"


# What refuses a request once its version is resolved; each is logged as a failed prediction.
# (Loading the model can fail too, with other errors: that is the server's failure, not the
# request's, and it is not logged as a prediction.)
_REFUSALS = (BadRequest, InvalidInput, InferenceLimitExceeded)


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


@dataclass(frozen=True, slots=True)
class Answer:
    """A predict response, encoded for its protocol: what a route or the fast path sends."""

    body: bytes
    headers: Mapping[str, str]
    # What runs once the answer is sent (a shadow copy of the request), if anything.
    background: BackgroundTask | None = None


JSON_HEADERS: Mapping[str, str] = MappingProxyType({"content-type": "application/json"})


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

    def route(self, traffic: Traffic, routing_key: str | None) -> tuple[Target, Target | None]:
        """Choose the version of a request naming none, and the shadow to copy it to (if sampled).

        With a routing key the choice is `sticky_point`'s (the same key, the same route while
        the policy holds); without, a weighted random draw. The shadow is sampled at random
        with the policy's rate, and never when the route chose the shadow's version.
        """
        total = traffic.total
        if routing_key is None:
            point = self.rng.randrange(total)
        else:
            point = sticky_point(traffic.routes[0].model_id, routing_key, total)
        chosen = traffic.routes[bisect.bisect_right(traffic.bounds, point)]
        shadow = traffic.shadow
        if shadow is not None and (
            shadow.version_id == chosen.version_id or self.rng.random() >= traffic.sample_rate
        ):
            shadow = None
        return chosen, shadow

    def shadow_copy(
        self,
        shadow: Target,
        *,
        caller: Caller,
        protocol: str,
        primary_id: uuid.UUID,
        primary: np.ndarray,
        by_label: bool,
        rows: Any = None,
        batch: np.ndarray | None = None,
        feeds: dict[str, np.ndarray] | None = None,
    ) -> BackgroundTask:
        """Return the task that starts the shadow prediction of a request once it is answered.

        `rows` are a native request's inputs (checked again against the shadow's features),
        `batch` a V2 request's tensor, `feeds` a network's named tensors (checked against the
        shadow's inputs); `primary` the answer's predictions (a network's first output),
        compared by label (classifiers) or by value.
        """
        copy = ShadowCopy(
            shadow, caller, protocol, primary_id, primary, by_label, rows, batch, feeds
        )
        return BackgroundTask(self._start_shadow, copy)

    async def _start_shadow(self, copy: ShadowCopy) -> None:
        # Only schedules: the request's ASGI call ends at once, whatever the shadow costs.
        if len(self._shadows) >= self.max_shadows_in_flight:
            self.metrics.shadow_dropped.inc()
            return
        task = asyncio.create_task(self._run_shadow(copy), name="shadow-prediction")
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

    async def _run_shadow(self, copy: ShadowCopy) -> None:
        """Predict a shadow copy and log it as a shadow prediction; its errors are only logged.

        A copy the shadow refuses (inputs that do not fit it, a time or memory budget) is logged
        as a failed shadow prediction; one that fails otherwise (the model does not load) is
        only logged, as a warning.
        """
        target = copy.target
        try:
            runtime = await self.runtime(target)
            if copy.feeds is not None:
                await self._run_network_shadow(copy, runtime)
                return
            if copy.rows is not None:
                batch = rows_batch(
                    copy.rows, runtime=runtime, feature_names=target.feature_names,
                    limits=self.limits,
                )  # fmt: skip
            else:
                assert copy.batch is not None  # noqa: S101 - one of the two, by construction
                batch = _fit_tensor(copy.batch, runtime)
            started = time.perf_counter()
            try:
                result = await self.batcher.predict(target.version_id, runtime, batch)
            except (ValueError, TypeError) as exc:
                raise ModelCouldNotPredict(exc) from exc
            elapsed_ms = (time.perf_counter() - started) * 1000
            predictions = result.predictions
            if not _finite(predictions):
                raise InvalidInput("the model produced a value that is not a finite number")
        except _REFUSALS as exc:
            error = exc.logged if isinstance(exc, ModelCouldNotPredict) else exc.detail
            self._record_shadow(copy, error=error, n_rows=0)
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
        if result.probabilities is not None and _finite(result.probabilities):
            outputs["probabilities"] = jsonable(result.probabilities)
        self._record_shadow(
            copy, outputs=outputs, n_rows=len(batch), inference_time_ms=elapsed_ms,
            agreed_rows=agreed, abs_diff_sum=abs_diff,
        )  # fmt: skip

    async def _run_network_shadow(self, copy: ShadowCopy, runtime: Runtime) -> None:
        """The shadow copy of a network's request: its first output compared by value."""
        assert copy.feeds is not None  # noqa: S101 - the caller's branch
        target = copy.target
        try:
            if runtime.tensor_inputs is None:
                raise InvalidInput("the shadow version takes a table, not named tensors")
            check_feeds(copy.feeds, runtime=runtime, limits=self.limits)
            rows = _rows(copy.feeds, runtime)
            started = time.perf_counter()
            try:
                result = await self.batcher.run(target.version_id, runtime, copy.feeds, rows)
            except (ValueError, TypeError) as exc:
                raise ModelCouldNotPredict(exc) from exc
            elapsed_ms = (time.perf_counter() - started) * 1000
            if not all(_finite(value) for value in result.outputs.values()):
                raise InvalidInput("the model produced a value that is not a finite number")
        except _REFUSALS as exc:
            error = exc.logged if isinstance(exc, ModelCouldNotPredict) else exc.detail
            self._record_shadow(copy, error=error, n_rows=0)
            return
        first = result.outputs[runtime.tensor_outputs[0].name]
        _, abs_diff = compare(copy.primary, first, by_label=False)
        self._record_shadow(
            copy, outputs=loggable_tensors(result.outputs), n_rows=rows,
            inference_time_ms=elapsed_ms, abs_diff_sum=abs_diff,
        )  # fmt: skip

    def _record_shadow(
        self,
        copy: ShadowCopy,
        *,
        n_rows: int,
        outputs: Any = None,
        error: str | None = None,
        inference_time_ms: float | None = None,
        agreed_rows: int | None = None,
        abs_diff_sum: float | None = None,
    ) -> None:
        target = copy.target
        self.log.record(
            PredictionRecord(
                id=uuid7(),
                model_id=target.model_id,
                version_id=target.version_id,
                version=target.version,
                owner_id=target.owner_id,
                user_id=copy.caller.user.id,
                api_key_id=copy.caller.api_key_id,
                protocol=copy.protocol,
                status="success" if error is None else "error",
                error=error,
                # The primary prediction (`shadow_of`) holds the inputs: not stored twice.
                inputs=None,
                outputs=outputs,
                n_rows=n_rows,
                inference_time_ms=inference_time_ms,
                created_at=utcnow(),
                shadow=True,
                shadow_of=copy.primary_id,
                agreed_rows=agreed_rows,
                abs_diff_sum=abs_diff_sum,
            )
        )

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
        started = time.perf_counter()
        try:
            with tracing.span("predict") as span:
                if span is not None:
                    span.set_attributes(_span_attributes(target, protocol, len(batch)))
                result = await self.batcher.predict(target.version_id, runtime, batch)
        except (ValueError, TypeError) as exc:
            raise ModelCouldNotPredict(exc) from exc
        elapsed_ms = (time.perf_counter() - started) * 1000
        predictions, probabilities = result.predictions, result.probabilities
        if not _finite(predictions) or (probabilities is not None and not _finite(probabilities)):
            raise InvalidInput("the model produced a value that is not a finite number")
        outputs: dict[str, Any] = {"predictions": jsonable(predictions)}
        if probabilities is not None:
            outputs["probabilities"] = jsonable(probabilities)
        prediction_id = uuid7()
        self._record(
            prediction_id, target, caller, protocol, inputs=inputs, outputs=outputs,
            n_rows=len(batch), inference_time_ms=elapsed_ms,
        )  # fmt: skip
        self.metrics.prediction(target.model_id, target.version, protocol, "success")
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
        rows = _rows(feeds, runtime)
        started = time.perf_counter()
        try:
            with tracing.span("predict") as span:
                if span is not None:
                    span.set_attributes(_span_attributes(target, protocol, rows))
                result = await self.batcher.run(target.version_id, runtime, feeds, rows)
        except (ValueError, TypeError) as exc:
            raise ModelCouldNotPredict(exc) from exc
        elapsed_ms = (time.perf_counter() - started) * 1000
        if not all(_finite(value) for value in result.outputs.values()):
            raise InvalidInput("the model produced a value that is not a finite number")
        prediction_id = uuid7()
        self._record(
            prediction_id, target, caller, protocol, inputs=loggable_tensors(feeds),
            outputs=loggable_tensors(result.outputs), n_rows=rows, inference_time_ms=elapsed_ms,
        )  # fmt: skip
        self.metrics.prediction(target.model_id, target.version, protocol, "success")
        return TensorOutcome(prediction_id, result.outputs, elapsed_ms)

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
        prediction_id = uuid7()
        self._record(
            prediction_id, target, caller, protocol, inputs=inputs, error=error, n_rows=n_rows
        )
        self.metrics.prediction(target.model_id, target.version, protocol, "error")
        return prediction_id

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


@dataclass(frozen=True, slots=True)
class ShadowCopy:
    """A request to predict again with the shadow version, after its answer was sent."""

    target: Target
    caller: Caller
    protocol: str
    primary_id: uuid.UUID
    primary: np.ndarray
    by_label: bool
    rows: Any
    batch: np.ndarray | None
    feeds: dict[str, np.ndarray] | None = None


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


class Attempt:
    """One predict request on a resolved version: the one place its refusal is logged.

    A refusal (`_REFUSALS`) raised inside `with predictor.attempt(...)` is logged as a failed
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
        if isinstance(exc, _REFUSALS):
            error = exc.logged if isinstance(exc, ModelCouldNotPredict) else exc.detail
            self.predictor.record_failure(
                self.target, caller=self.caller, protocol=self.protocol, error=error,
                inputs=self.inputs, n_rows=self.n_rows,
            )  # fmt: skip


async def predict_rest(
    predictor: Predictor,
    target: Target,
    body: bytes,
    *,
    caller: Caller,
    shadow: Target | None = None,
) -> Answer:
    """Answer a native `POST /api/v1/predict/{model}` body with a resolved version.

    With `shadow` (a traffic policy sampled this request) the answer carries the background
    task that predicts a copy with that version once the answer is sent.

    Raises:
        BadRequest, InvalidInput: the body or its inputs do not fit (logged as failures).
        InferenceLimitExceeded: the model passed its budget (logged as a failure).
    """
    with predictor.attempt(target, caller=caller, protocol="rest") as attempt:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"invalid JSON: {exc}") from exc
        if not isinstance(document, dict) or len(document) != 1 or "inputs" not in document:
            raise InvalidInput('the body must be {"inputs": [...]} and nothing else')
        inputs = document["inputs"]
        attempt.inputs = _loggable(inputs)
        runtime = await predictor.runtime(target)
        if runtime.tensor_inputs is not None:
            feeds = rest_feeds(inputs, runtime=runtime, limits=predictor.limits)
            attempt.inputs, attempt.n_rows = loggable_tensors(feeds), _rows(feeds, runtime)
            network = await predictor.predict_tensors(
                target, runtime, feeds, caller=caller, protocol="rest"
            )
            return _network_answer(
                target,
                network,
                _network_shadow(predictor, shadow, caller, "rest", network, feeds, runtime),
            )
        batch = rows_batch(
            inputs, runtime=runtime, feature_names=target.feature_names, limits=predictor.limits
        )
        attempt.inputs, attempt.n_rows = inputs, len(batch)
        outcome = await predictor.predict(
            target, runtime, batch, caller=caller, protocol="rest", inputs=inputs
        )
    answer: dict[str, Any] = {
        "prediction_id": str(outcome.prediction_id),
        "model_id": str(target.model_id),
        "model_name": target.model_name,
        "version": target.version,
        "predictions": jsonable(outcome.predictions),
    }
    if outcome.probabilities is not None:
        answer["probabilities"] = jsonable(outcome.probabilities)
        answer["classes"] = outcome.classes
        answer["confidence"] = jsonable(outcome.probabilities.max(axis=1))
    answer["inference_time_ms"] = round(outcome.inference_time_ms, 3)
    background = None
    if shadow is not None:
        background = predictor.shadow_copy(
            shadow,
            caller=caller,
            protocol="rest",
            primary_id=outcome.prediction_id,
            primary=outcome.predictions,
            by_label=runtime.classes is not None,
            rows=inputs,
        )
    return Answer(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), JSON_HEADERS, background)


def _network_shadow(
    predictor: Predictor,
    shadow: Target | None,
    caller: Caller,
    protocol: str,
    outcome: TensorOutcome,
    feeds: dict[str, np.ndarray],
    runtime: Runtime,
) -> BackgroundTask | None:
    if shadow is None:
        return None
    return predictor.shadow_copy(
        shadow,
        caller=caller,
        protocol=protocol,
        primary_id=outcome.prediction_id,
        primary=outcome.outputs[runtime.tensor_outputs[0].name],
        by_label=False,
        feeds=feeds,
    )


def _network_answer(
    target: Target, outcome: TensorOutcome, background: BackgroundTask | None
) -> Answer:
    """A network's REST answer: its output tensors by name, nested as their shapes."""
    answer = {
        "prediction_id": str(outcome.prediction_id),
        "model_id": str(target.model_id),
        "model_name": target.model_name,
        "version": target.version,
        "outputs": {name: jsonable(value) for name, value in outcome.outputs.items()},
        "inference_time_ms": round(outcome.inference_time_ms, 3),
    }
    return Answer(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), JSON_HEADERS, background)


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


def _rows(feeds: Mapping[str, np.ndarray], runtime: Runtime) -> int:
    """The rows of a network call: its batch dimension, or one call of one row without."""
    if not runtime.has_batch_axis:
        return 1
    first = next(iter(feeds.values()))
    return len(first) if first.ndim else 1


def _loggable(inputs: Any) -> Any:
    """Return refused inputs as they may be logged: bounded, so a huge bad body stays small."""
    if isinstance(inputs, list) and len(inputs) > 100:
        return inputs[:100]
    return inputs


# --- the Open Inference Protocol ------------------------------------------------------------------

V2_OUTPUTS = ["predictions"]
V2_OUTPUTS_WITH_PROBA = ["predictions", "probabilities"]
PLATFORMS = {
    Framework.SKLEARN: "sklearn",
    Framework.ONNX: "onnxruntime_onnx",
    Framework.XGBOOST: "xgboost",
    Framework.LIGHTGBM: "lightgbm",
}


async def predict_v2(
    predictor: Predictor,
    target: Target,
    body: bytes,
    *,
    caller: Caller,
    name: str,
    header_length: str | None,
    shadow: Target | None = None,
) -> Answer:
    """Answer a V2 inference request body with a resolved version (`shadow`: as `predict_rest`).

    `name` is the model as the path named it; `header_length` the request's
    Inference-Header-Content-Length, if any. What is cheap to check is checked first: whether
    the declared tensor fits the model costs O(1), building its array (a Python loop per
    element for BYTES) only happens for one that does.

    Raises:
        InvalidInferenceRequest: the protocol or the model refuses the request (logged).
        InvalidInput, InferenceLimitExceeded: the model could not predict the values (logged).
    """
    limits = predictor.limits
    with predictor.attempt(target, caller=caller, protocol="v2") as attempt:
        try:
            header = oip.read_infer_request(
                body,
                json_length=oip.header_length_value(header_length),
                max_elements=limits.max_elements,
            )
            runtime = await predictor.runtime(target)
            if runtime.tensor_inputs is not None:
                check_network_header(header, runtime=runtime, limits=limits)
                wanted = oip.select_outputs(header, [t.name for t in runtime.tensor_outputs])
                request = oip.decode_inputs(header)
                feeds = {tensor.name: tensor.data for tensor in request.inputs}
            else:
                check_tensor(
                    header, runtime=runtime, feature_names=target.feature_names, limits=limits
                )
                wanted = oip.select_outputs(
                    header, V2_OUTPUTS_WITH_PROBA if runtime.has_proba else V2_OUTPUTS
                )
                request = oip.decode_inputs(header)
                batch = tensor_batch(request.inputs[0], runtime.input_dtype)
        except oip.OIPError as exc:
            raise InvalidInferenceRequest(exc.message) from exc
        except InvalidInput as exc:
            raise InvalidInferenceRequest(exc.detail) from exc
        if runtime.tensor_inputs is not None:
            attempt.inputs, attempt.n_rows = loggable_tensors(feeds), _rows(feeds, runtime)
            network = await predictor.predict_tensors(
                target, runtime, feeds, caller=caller, protocol="v2"
            )
            background = _network_shadow(predictor, shadow, caller, "v2", network, feeds, runtime)
            return _network_v2_answer(name, target, request, network, wanted, background)
        attempt.inputs, attempt.n_rows = batch, len(batch)
        outcome = await predictor.predict(
            target, runtime, batch, caller=caller, protocol="v2", inputs=batch
        )
    tensors = []
    if "predictions" in wanted:
        tensors.append(_tensor("predictions", outcome.predictions))
    if "probabilities" in wanted and outcome.probabilities is not None:
        tensors.append(
            _tensor("probabilities", outcome.probabilities.astype(np.float64, copy=False))
        )
    content, headers = oip.encode_infer_response(
        model_name=name,
        model_version=str(target.version),
        request_id=request.id,
        outputs=tensors,
        binary_outputs=oip.wanted_binary_outputs(request, [t.name for t in tensors]),
    )
    background = None
    if shadow is not None:
        background = predictor.shadow_copy(
            shadow,
            caller=caller,
            protocol="v2",
            primary_id=outcome.prediction_id,
            primary=outcome.predictions,
            by_label=runtime.classes is not None,
            batch=batch,
        )
    return Answer(content, headers, background)


def _network_v2_answer(
    name: str,
    target: Target,
    request: oip.InferRequest,
    outcome: TensorOutcome,
    wanted: list[str],
    background: BackgroundTask | None,
) -> Answer:
    tensors = [_tensor(output, outcome.outputs[output]) for output in wanted]
    content, headers = oip.encode_infer_response(
        model_name=name,
        model_version=str(target.version),
        request_id=request.id,
        outputs=tensors,
        binary_outputs=oip.wanted_binary_outputs(request, wanted),
    )
    return Answer(content, headers, background)


def _tensor(name: str, values: np.ndarray) -> oip.Tensor:
    if values.dtype.kind in "OUS":
        values = np.asarray([str(v) for v in values.ravel()], dtype=object).reshape(values.shape)
        datatype = "BYTES"
    else:
        datatype = oip.to_datatype(values.dtype)
    return oip.Tensor(name=name, datatype=datatype, shape=list(values.shape), data=values)


async def servable_versions(db: AsyncSession, model_id: uuid.UUID) -> list[int]:
    """Return the numbers of a model's versions that may be served (not archived), ascending."""
    rows = await db.scalars(
        select(ModelVersion.version)
        .where(ModelVersion.model_id == model_id, ModelVersion.stage != Stage.ARCHIVED)
        .order_by(ModelVersion.version)
    )
    return list(rows)


async def describe_v2_model(
    db: AsyncSession, user: User, name: str, *, version: int | None, predictor: Predictor
) -> dict[str, Any]:
    """Return the V2 metadata of a model's version (default: the one served without a version).

    `versions` lists every version that may be requested explicitly (each servable one);
    inputs and outputs are those of the version described. The session is closed before the
    model is loaded.

    Raises:
        As `resolve_target`.
    """
    target = await resolve_target(db, user, name, version=version)
    versions = await servable_versions(db, target.model_id)
    await db.close()
    runtime = await predictor.runtime(target)
    if runtime.tensor_inputs is not None:
        return oip.model_metadata(
            name=name,
            versions=[str(v) for v in versions],
            platform=PLATFORMS[target.framework],
            inputs=[_tensor_metadata(spec) for spec in runtime.tensor_inputs],
            outputs=[_tensor_metadata(spec) for spec in runtime.tensor_outputs],
        )
    inputs = [
        {
            "name": runtime.input_name,
            "datatype": oip.to_datatype(runtime.input_dtype),
            "shape": [-1, runtime.n_features if runtime.n_features is not None else -1],
        }
    ]
    outputs = [{"name": "predictions", "datatype": _label_datatype(runtime), "shape": [-1]}]
    if runtime.has_proba:
        n_classes = len(runtime.classes) if runtime.classes is not None else -1
        outputs.append({"name": "probabilities", "datatype": "FP64", "shape": [-1, n_classes]})
    return oip.model_metadata(
        name=name,
        versions=[str(v) for v in versions],
        platform=PLATFORMS[target.framework],
        inputs=inputs,
        outputs=outputs,
    )


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": oip.to_datatype(spec.dtype), "shape": list(spec.shape)}


def _label_datatype(runtime: Runtime) -> str:
    if runtime.classes:
        sample = runtime.classes[0]
        if isinstance(sample, str):
            return "BYTES"
        if isinstance(sample, bool):
            return "BOOL"
        if isinstance(sample, int):
            return "INT64"
    return "FP64" if runtime.input_dtype == np.float64 else "FP32"


def _span_attributes(target: Target, protocol: str, rows: int) -> dict[str, Any]:
    return {
        "modelyard.model": target.model_name,
        "modelyard.model_id": str(target.model_id),
        "modelyard.version": target.version,
        "modelyard.protocol": protocol,
        "modelyard.rows": rows,
    }


def jsonable(values: np.ndarray) -> Any:
    """Return an array for orjson: numeric ones as they are (fast, but contiguous only), others
    as lists."""
    if values.dtype.kind in "biuf":
        return np.ascontiguousarray(values)
    return values.tolist()


def _finite(values: np.ndarray) -> bool:
    return values.dtype.kind not in "fc" or bool(np.isfinite(values).all())
