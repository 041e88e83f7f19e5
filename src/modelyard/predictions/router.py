"""`POST /api/v1/predict/{model}`: the native REST prediction route."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Query, Request, Response

from modelyard.auth.deps import CallerDep
from modelyard.db.deps import SessionDep
from modelyard.errors import BadRequest
from modelyard.predictions import service
from modelyard.predictions.schemas import PredictRequest, PredictResponse
from modelyard.registry.deps import ModelRef
from modelyard.registry.schemas import AliasName, Stage
from modelyard.routing import make_router
from modelyard.state import StateDep

router = make_router(prefix="/api/v1/predict", tags=["predictions"])

RATE_WINDOW_SECONDS = 60
_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}


@router.post(
    "/{model}",
    response_model=PredictResponse,
    openapi_extra=_BODY,
    responses={422: {"description": "inputs that do not fit the model (logged as a failure)"}},
)
async def predict(
    request: Request,
    model: ModelRef,
    caller: CallerDep,
    db: SessionDep,
    state: StateDep,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    alias: AliasName | None = None,
    stage: Stage | None = None,
) -> Response:
    """Predict with a model: its production version, or the version, alias or stage given.

    `inputs` is a list of rows (`[[5.1, 3.5, 1.4, 0.2]]`) or of records by feature name
    (`[{"sepal_length": 5.1, ...}]`, any key order). Classifiers answer probabilities, classes
    and confidence too. Every call, success or failure, goes to the prediction log.
    """
    settings = state.settings
    await state.rate_limiter.hit(
        f"predict:{caller.user.id}",
        limit=settings.predict_rate_limit_per_minute,
        window_seconds=RATE_WINDOW_SECONDS,
    )
    target = await service.resolve_cached(
        db,
        caller.user,
        model,
        version=version,
        alias=alias,
        stage=stage,
        targets=state.target_cache,
        outage=state.outage_cache,
    )
    # Resolved: the connection goes back before the (possibly slow) load and predict.
    await db.close()
    predictor = state.predictor
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        predictor.record_failure(
            target, caller=caller, protocol="rest", error="invalid JSON", inputs=None
        )
        raise BadRequest(f"invalid JSON: {exc}") from exc
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(body, dict) or set(body) != {"inputs"}:
        error = 'the body must be {"inputs": [...]} and nothing else'
        predictor.record_failure(target, caller=caller, protocol="rest", error=error, inputs=None)
        raise service.InvalidInput(error)
    runtime = await predictor.runtime(target)
    try:
        matrix = service.input_matrix(
            inputs, runtime=runtime, target=target, max_rows=settings.max_batch_rows
        )
    except service.InvalidInput as exc:
        predictor.record_failure(
            target, caller=caller, protocol="rest", error=exc.detail, inputs=_loggable(inputs)
        )
        raise
    outcome = await predictor.predict(
        target, runtime, matrix, caller=caller, protocol="rest", inputs=inputs
    )
    answer: dict[str, Any] = {
        "prediction_id": str(outcome.prediction_id),
        "model_id": str(target.model_id),
        "model_name": target.model_name,
        "version": target.version,
        "predictions": _jsonable(outcome.predictions),
    }
    if outcome.probabilities is not None:
        answer["probabilities"] = _jsonable(outcome.probabilities)
        answer["classes"] = outcome.classes
        answer["confidence"] = _jsonable(outcome.probabilities.max(axis=1))
    answer["inference_time_ms"] = round(outcome.inference_time_ms, 3)
    return Response(
        orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )


def _jsonable(values: Any) -> Any:
    """Numeric arrays go to orjson as arrays (fast, but contiguous only); others as lists."""
    if values.dtype.kind in "biuf":
        return np.ascontiguousarray(values)
    return values.tolist()


def _loggable(inputs: Any) -> Any:
    """Return refused inputs as they may be logged: bounded, so a huge bad body stays small."""
    if isinstance(inputs, list) and len(inputs) > 100:
        return inputs[:100]
    return inputs
