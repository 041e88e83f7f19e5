"""The Open Inference Protocol (KServe V2) routes, over the same predict use case as the REST route.

Byte-compatible with what Triton, KServe and MLServer clients send and expect (see docs/architecture/oip.md):
JSON or binary tensors in and out, `{"error": ...}` on every failure. The codec is
`predictions.oip`, the use case `predictions.service`.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from modelyard import __version__
from modelyard.auth.deps import CallerDep
from modelyard.auth.service import Caller
from modelyard.db.deps import SessionDep
from modelyard.edge.routing import make_router
from modelyard.errors import v2_error_response
from modelyard.predictions import oip, service
from modelyard.state import AppState, StateDep

router = make_router(prefix="/v2", tags=["open inference protocol"])

SERVER_NAME = "modelyard"


@router.get("")
async def server_metadata() -> dict[str, Any]:
    """Describe the server and the protocol extensions it supports."""
    return oip.server_metadata(name=SERVER_NAME, version=__version__)


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """Answer while the process runs."""
    return {"live": True}


@router.get("/health/ready")
async def ready(state: StateDep) -> Response:
    """Answer 200 while the server takes requests, 503 once shutdown has begun."""
    if state.shutting_down:
        return v2_error_response(503, "shutting down")
    return Response(b'{"ready":true}', media_type="application/json")


@router.get("/models/{name}")
async def model_metadata(
    name: str, caller: CallerDep, db: SessionDep, state: StateDep
) -> dict[str, Any]:
    """Describe a model's default version: its inputs and outputs, and every servable version."""
    return await service.describe_v2_model(
        db, caller.user, name, version=None, predictor=state.predictor
    )


@router.get("/models/{name}/versions/{version}")
async def version_metadata(
    name: str, version: str, caller: CallerDep, db: SessionDep, state: StateDep
) -> dict[str, Any]:
    """Describe one version of a model, and list every servable version."""
    return await service.describe_v2_model(
        db, caller.user, name, version=oip.version_number(version), predictor=state.predictor
    )


@router.get("/models/{name}/ready")
async def model_ready(name: str, caller: CallerDep, db: SessionDep) -> dict[str, Any]:
    """Answer 200 when the model has a version that can be served."""
    await service.resolve_target(db, caller.user, name)
    return {"name": name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready")
async def version_ready(
    name: str, version: str, caller: CallerDep, db: SessionDep
) -> dict[str, Any]:
    """Answer 200 when this version can be served."""
    await service.resolve_target(db, caller.user, name, version=oip.version_number(version))
    return {"name": name, "ready": True}


@router.post("/models/{name}/infer", response_class=Response)
async def infer(
    name: str, request: Request, caller: CallerDep, db: SessionDep, state: StateDep
) -> Response:
    """Run an inference request on the model's default version, or the version its traffic
    policy chooses (sticky per `X-Routing-Key`); `model_version` says which served."""
    return await _infer(name, None, request, caller, db, state)


@router.post("/models/{name}/versions/{version}/infer", response_class=Response)
async def infer_version(
    name: str, version: str, request: Request, caller: CallerDep, db: SessionDep, state: StateDep
) -> Response:
    """Run an inference request on one version of a model."""
    return await _infer(name, oip.version_number(version), request, caller, db, state)


async def _infer(
    name: str,
    version: int | None,
    request: Request,
    caller: Caller,
    db: SessionDep,
    state: AppState,
) -> Response:
    await state.predictor.admit(caller)
    target = await service.resolve_cached(
        db,
        caller.user,
        name,
        version=version,
        targets=state.target_cache,
        outage=state.outage_cache,
    )
    await db.close()
    shadow = None
    if target.traffic is not None:
        target, shadow = state.predictor.route(
            target.traffic, request.headers.get(service.ROUTING_KEY_HEADER)
        )
    answer = await service.predict_v2(
        state.predictor,
        target,
        await request.body(),
        caller=caller,
        name=name,
        header_length=request.headers.get(oip.HEADER_LENGTH),
        shadow=shadow,
    )
    return Response(answer.body, headers=answer.headers, background=answer.background)
