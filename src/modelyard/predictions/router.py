"""`POST /api/v1/predict/{model}`: the native REST prediction route."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request, Response

from modelyard.auth.deps import CallerDep
from modelyard.db.deps import SessionDep
from modelyard.edge.routing import make_router
from modelyard.predictions import service
from modelyard.predictions.schemas import PredictRequest, PredictResponse
from modelyard.registry.deps import ModelRef
from modelyard.registry.schemas import AliasName, Stage
from modelyard.state import StateDep

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
    state: StateDep,
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
    await state.predictor.admit(caller)
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
    shadow = None
    if target.traffic is not None:
        target, shadow = state.predictor.route(
            target.traffic, request.headers.get(service.ROUTING_KEY_HEADER)
        )
    answer = await service.predict_rest(
        state.predictor, target, await request.body(), caller=caller, shadow=shadow
    )
    return Response(answer.body, headers=answer.headers, background=answer.background)
