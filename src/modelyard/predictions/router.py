"""`POST /api/v1/predict/{model}`: the native REST prediction route."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Query, Request, Response

from modelyard.auth.deps import CallerDep
from modelyard.auth.service import Caller
from modelyard.db.deps import SessionDep
from modelyard.errors import BadRequest
from modelyard.predictions import service
from modelyard.predictions.schemas import PredictRequest, PredictResponse
from modelyard.registry.deps import ModelRef
from modelyard.registry.schemas import AliasName, Stage
from modelyard.routing import make_router
from modelyard.state import AppState, StateDep

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
    await admit(state, caller)
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
    return await answer(state, caller, target, await request.body())


async def admit(state: AppState, caller: Caller) -> None:
    """Count one prediction against the caller's `predict_rate_limit_per_minute` (both protocols).

    Raises:
        RateLimited: past the limit.
    """
    limit = state.settings.predict_rate_limit_per_minute
    if limit > 0:
        await state.rate_limiter.take(
            f"predict:{caller.api_key_id or caller.user.id}",
            limit=limit,
            window_seconds=RATE_WINDOW_SECONDS,
        )


async def answer(state: AppState, caller: Caller, target: service.Target, raw: bytes) -> Response:
    """Predict a request body with a resolved version: the route's work after auth and lookup.

    Shared with the fast path (`predictions.fastpath`), which resolves from memory.

    Raises:
        BadRequest, InvalidInput: the body or its inputs do not fit (logged as failures).
    """
    predictor = state.predictor
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        predictor.record_failure(
            target, caller=caller, protocol="rest", error="invalid JSON", inputs=None
        )
        raise BadRequest(f"invalid JSON: {exc}") from exc
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(body, dict) or len(body) != 1 or "inputs" not in body:
        error = 'the body must be {"inputs": [...]} and nothing else'
        predictor.record_failure(target, caller=caller, protocol="rest", error=error, inputs=None)
        raise service.InvalidInput(error)
    runtime = await predictor.runtime(target)
    try:
        matrix = service.input_matrix(
            inputs,
            runtime=runtime,
            target=target,
            max_rows=state.settings.max_batch_rows,
            max_elements=state.settings.max_predict_elements,
        )
    except service.InvalidInput as exc:
        predictor.record_failure(
            target, caller=caller, protocol="rest", error=exc.detail, inputs=_loggable(inputs)
        )
        raise
    outcome = await predictor.predict(
        target, runtime, matrix, caller=caller, protocol="rest", inputs=inputs
    )
    document: dict[str, Any] = {
        "prediction_id": str(outcome.prediction_id),
        "model_id": str(target.model_id),
        "model_name": target.model_name,
        "version": target.version,
        "predictions": service.jsonable(outcome.predictions),
    }
    if outcome.probabilities is not None:
        document["probabilities"] = service.jsonable(outcome.probabilities)
        document["classes"] = outcome.classes
        document["confidence"] = service.jsonable(outcome.probabilities.max(axis=1))
    document["inference_time_ms"] = round(outcome.inference_time_ms, 3)
    return Response(
        orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )


def _loggable(inputs: Any) -> Any:
    """Return refused inputs as they may be logged: bounded, so a huge bad body stays small."""
    if isinstance(inputs, list) and len(inputs) > 100:
        return inputs[:100]
    return inputs
