"""The Open Inference Protocol (KServe V2): its routes, and requests decoded and answers encoded
around the same predict pipeline as the REST route (`pipeline`).

Byte-compatible with what Triton, KServe and MLServer clients send and expect (see docs/architecture/oip.md):
JSON or binary tensors in and out, `{"error": ...}` on every failure. The codec is
`predictions.oip`.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.background import BackgroundTask

from modelyard import __version__
from modelyard.auth.deps import CallerDep
from modelyard.auth.service import Caller
from modelyard.changes.deps import OutageCacheDep
from modelyard.changes.hotcache import EpochCache
from modelyard.changes.outage import OutageCache
from modelyard.db.deps import SessionDep
from modelyard.db.tables import User
from modelyard.edge.routing import make_router
from modelyard.errors import BadRequest, v2_error_response
from modelyard.observability.health import ReadinessDep
from modelyard.predictions import oip, pipeline, targets
from modelyard.predictions.deps import PredictorDep, TargetCacheDep
from modelyard.predictions.inputs import (
    InvalidInput,
    check_network_header,
    check_tensor,
    tensor_batch,
)
from modelyard.predictions.pipeline import Answer
from modelyard.predictions.predictor import Predictor, TensorOutcome, loggable_tensors, rows_of
from modelyard.predictions.shadow import ShadowCopy, network_copy, shadow_task
from modelyard.predictions.targets import Target
from modelyard.predictions.traffic.routing import ROUTING_KEY_HEADER
from modelyard.serving.formats import Framework
from modelyard.serving.runtimes import Runtime
from modelyard.serving.runtimes.base import TensorSpec

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


@dataclass(frozen=True, slots=True)
class _InferParts:
    """What an inference route takes: the predictor and the caches that resolve a version."""

    predictor: Predictor
    targets: EpochCache[Hashable, Target]
    outage: OutageCache[Hashable, Any]


async def _infer_parts(
    predictor: PredictorDep, targets: TargetCacheDep, outage: OutageCacheDep
) -> _InferParts:
    return _InferParts(predictor, targets, outage)


InferParts = Annotated[_InferParts, Depends(_infer_parts)]


@router.get("/health/ready")
async def ready(readiness: ReadinessDep) -> Response:
    """Answer 200 while the server takes requests, 503 once shutdown has begun."""
    if readiness.shutting_down:
        return v2_error_response(503, "shutting down")
    return Response(b'{"ready":true}', media_type="application/json")


@router.get("/models/{name}")
async def model_metadata(
    name: str, caller: CallerDep, db: SessionDep, predictor: PredictorDep
) -> dict[str, Any]:
    """Describe a model's default version: its inputs and outputs, and every servable version."""
    return await describe_v2_model(db, caller.user, name, version=None, predictor=predictor)


@router.get("/models/{name}/versions/{version}")
async def version_metadata(
    name: str, version: str, caller: CallerDep, db: SessionDep, predictor: PredictorDep
) -> dict[str, Any]:
    """Describe one version of a model, and list every servable version."""
    return await describe_v2_model(
        db, caller.user, name, version=oip.version_number(version), predictor=predictor
    )


@router.get("/models/{name}/ready")
async def model_ready(name: str, caller: CallerDep, db: SessionDep) -> dict[str, Any]:
    """Answer 200 when the model has a version that can be served."""
    await targets.resolve_target(db, caller.user, name)
    return {"name": name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready")
async def version_ready(
    name: str, version: str, caller: CallerDep, db: SessionDep
) -> dict[str, Any]:
    """Answer 200 when this version can be served."""
    await targets.resolve_target(db, caller.user, name, version=oip.version_number(version))
    return {"name": name, "ready": True}


@router.post("/models/{name}/infer", response_class=Response)
async def infer(
    name: str, request: Request, caller: CallerDep, db: SessionDep, parts: InferParts
) -> Response:
    """Run an inference request on the model's default version, or the version its traffic
    policy chooses (sticky per `X-Routing-Key`); `model_version` says which served."""
    return await _infer(name, None, request, caller, db, parts)


@router.post("/models/{name}/versions/{version}/infer", response_class=Response)
async def infer_version(
    name: str, version: str, request: Request, caller: CallerDep, db: SessionDep, parts: InferParts
) -> Response:
    """Run an inference request on one version of a model."""
    return await _infer(name, oip.version_number(version), request, caller, db, parts)


async def _infer(
    name: str,
    version: int | None,
    request: Request,
    caller: Caller,
    db: SessionDep,
    parts: _InferParts,
) -> Response:
    target = await targets.resolve_cached(
        db,
        caller.user,
        name,
        version=version,
        targets=parts.targets,
        outage=parts.outage,
    )
    await db.close()
    answer = await pipeline.predict(
        parts.predictor,
        target,
        caller=caller,
        routing_key=request.headers.get(ROUTING_KEY_HEADER),
        body=request.body,
        codec=functools.partial(
            predict_v2, name=name, header_length=request.headers.get(oip.HEADER_LENGTH)
        ),
    )
    return Response(answer.body, headers=answer.headers, background=answer.background)


# --- the codec ------------------------------------------------------------------------------------


class InvalidInferenceRequest(BadRequest):
    """A V2 inference request the protocol refuses (400, `{"error": ...}` under `/v2`)."""

    type = "invalid-inference-request"


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
            attempt.inputs, attempt.n_rows = loggable_tensors(feeds), rows_of(feeds, runtime)
            network = await predictor.predict_tensors(
                target, runtime, feeds, caller=caller, protocol="v2"
            )
            copy = network_copy(shadow, caller, "v2", network, feeds, runtime)
            background = shadow_task(predictor, copy)
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
    copy = None
    if shadow is not None:
        copy = ShadowCopy(
            shadow,
            caller,
            "v2",
            primary_id=outcome.prediction_id,
            primary=outcome.predictions,
            by_label=runtime.classes is not None,
            batch=batch,
        )
    return Answer(content, headers, shadow_task(predictor, copy))


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
    target = await targets.resolve_target(db, user, name, version=version)
    versions = await targets.servable_versions(db, target.model_id)
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
