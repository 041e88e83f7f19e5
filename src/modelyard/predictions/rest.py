"""The native REST protocol: `POST /api/v1/predict/{model}`, its body decoded and its answer
encoded around the predict pipeline (`pipeline`)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import orjson
from fastapi import Query, Request, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from modelyard.auth.deps import CallerDep
from modelyard.auth.service import Caller
from modelyard.changes.deps import OutageCacheDep
from modelyard.db.deps import SessionDep
from modelyard.edge.routing import make_router
from modelyard.errors import BadRequest
from modelyard.predictions import pipeline, targets
from modelyard.predictions.deps import PredictorDep, TargetCacheDep
from modelyard.predictions.inputs import InvalidInput, rest_feeds, rows_batch
from modelyard.predictions.pipeline import JSON_HEADERS, Answer
from modelyard.predictions.predictor import (
    Predictor,
    TensorOutcome,
    jsonable,
    loggable,
    loggable_tensors,
    rows_of,
)
from modelyard.predictions.shadow import ShadowCopy, network_copy, shadow_task
from modelyard.predictions.targets import Target
from modelyard.predictions.traffic.routing import ROUTING_KEY_HEADER
from modelyard.registry.deps import ModelRef
from modelyard.registry.schemas import AliasName, Stage


class PredictRequest(BaseModel):
    inputs: list[list[float] | dict[str, float]] = Field(
        description="rows of feature values, or records by feature name", min_length=1
    )


class PredictResponse(BaseModel):
    prediction_id: uuid.UUID
    model_id: uuid.UUID
    model_name: str
    version: int
    predictions: list[Any]
    probabilities: list[list[float]] | None = Field(
        None, description="classifiers that give probabilities only"
    )
    classes: list[Any] | None = None
    confidence: list[float] | None = None
    inference_time_ms: float


router = make_router(prefix="/api/v1/predict", tags=["predictions"])

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
    predictor: PredictorDep,
    target_cache: TargetCacheDep,
    outage: OutageCacheDep,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    alias: AliasName | None = None,
    stage: Stage | None = None,
) -> Response:
    """Predict with a model: its production version, or the version, alias or stage given.

    Without a version, alias or stage, a model's traffic policy (`/api/v1/models/{model}/traffic`)
    chooses the version by weight, the same one for each `X-Routing-Key` value; the answer's
    `version` says which served.

    `inputs` is a list of rows (`[[5.1, 3.5, 1.4, 0.2]]`) or of records by feature name
    (`[{"sepal_length": 5.1, ...}]`, any key order). Classifiers answer probabilities, classes
    and confidence too. Every call, success or failure, goes to the prediction log.
    """
    target = await targets.resolve_cached(
        db,
        caller.user,
        model,
        version=version,
        alias=alias,
        stage=stage,
        targets=target_cache,
        outage=outage,
    )
    # Resolved: the connection goes back before the (possibly slow) load and predict.
    await db.close()
    answer = await pipeline.predict(
        predictor,
        target,
        caller=caller,
        routing_key=request.headers.get(ROUTING_KEY_HEADER),
        body=request.body,
        codec=predict_rest,
    )
    return Response(answer.body, headers=answer.headers, background=answer.background)


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
        attempt.inputs = loggable(inputs)
        runtime = await predictor.runtime(target)
        if runtime.tensor_inputs is not None:
            feeds = rest_feeds(inputs, runtime=runtime, limits=predictor.limits)
            attempt.inputs, attempt.n_rows = loggable_tensors(feeds), rows_of(feeds, runtime)
            network = await predictor.predict_tensors(
                target, runtime, feeds, caller=caller, protocol="rest"
            )
            copy = network_copy(shadow, caller, "rest", network, feeds, runtime)
            return _network_answer(target, network, shadow_task(predictor, copy))
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
    copy = None
    if shadow is not None:
        copy = ShadowCopy(
            shadow,
            caller,
            "rest",
            primary_id=outcome.prediction_id,
            primary=outcome.predictions,
            by_label=runtime.classes is not None,
            rows=inputs,
        )
    content = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    return Answer(content, JSON_HEADERS, shadow_task(predictor, copy))


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
