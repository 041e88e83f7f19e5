"""The Open Inference Protocol (KServe V2) over the same prediction path as the REST route.

Byte-compatible with what Triton, KServe and MLServer clients send and expect (see OIP.md):
JSON or binary tensors in and out, `{"error": ...}` on every failure.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import Request, Response

from modelyard import __version__
from modelyard.auth.deps import CallerDep
from modelyard.auth.service import Caller
from modelyard.db.deps import SessionDep
from modelyard.errors import v2_error_response
from modelyard.predictions import oip, service
from modelyard.predictions.router import admit
from modelyard.routing import make_router
from modelyard.serving.formats import Framework
from modelyard.serving.runtimes import Runtime
from modelyard.state import AppState, StateDep

router = make_router(prefix="/v2", tags=["open inference protocol"])

SERVER_NAME = "modelyard"
PLATFORMS = {
    Framework.SKLEARN: "sklearn",
    Framework.ONNX: "onnxruntime_onnx",
    Framework.XGBOOST: "xgboost",
    Framework.LIGHTGBM: "lightgbm",
}
HEADER_LENGTH = "inference-header-content-length"


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
    """Describe a model's default version: its inputs and outputs."""
    return await _metadata(name, None, caller, db, state)


@router.get("/models/{name}/versions/{version}")
async def version_metadata(
    name: str, version: str, caller: CallerDep, db: SessionDep, state: StateDep
) -> dict[str, Any]:
    """Describe one version of a model."""
    return await _metadata(name, version_number(version), caller, db, state)


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
    await service.resolve_target(db, caller.user, name, version=version_number(version))
    return {"name": name, "ready": True}


@router.post("/models/{name}/infer", response_class=Response)
async def infer(
    name: str, request: Request, caller: CallerDep, db: SessionDep, state: StateDep
) -> Response:
    """Run an inference request on the model's default version."""
    return await _infer(name, None, request, caller, db, state)


@router.post("/models/{name}/versions/{version}/infer", response_class=Response)
async def infer_version(
    name: str, version: str, request: Request, caller: CallerDep, db: SessionDep, state: StateDep
) -> Response:
    """Run an inference request on one version of a model."""
    return await _infer(name, version_number(version), request, caller, db, state)


# Longest decimal a byte count or a version may take; also keeps int() far from its digit limit.
_MAX_DIGITS = 18


def ascii_number(raw: str) -> int | None:
    """Return a client's decimal (ASCII digits only, at most 18 of them), or None if it is not one.

    `str.isdigit()` and `int()` alone accept other scripts' digits, and `isdigit()` even accepts
    some that `int()` then refuses ("²"): the cause of a 500 on a header.
    """
    if not raw or len(raw) > _MAX_DIGITS or not raw.isascii() or not raw.isdigit():
        return None
    return int(raw)


def version_number(raw: str) -> int:
    """Parse a path's version.

    Raises:
        OIPError: not a version number (400).
    """
    number = ascii_number(raw)
    if number is None or not 1 <= number < 2**31:
        raise oip.OIPError(f"version {oip.quote(raw)} is not a version number of this server")
    return number


def header_length_value(raw: str | None) -> int | None:
    """Parse the Inference-Header-Content-Length header (None when absent).

    Raises:
        OIPError: present but not a byte count (400).
    """
    if raw is None:
        return None
    number = ascii_number(raw)
    if number is None:
        raise oip.OIPError(f"{HEADER_LENGTH} must be a byte count")
    return number


async def _metadata(
    name: str, version: int | None, caller: Caller, db: SessionDep, state: AppState
) -> dict[str, Any]:
    target = await service.resolve_target(db, caller.user, name, version=version)
    await db.close()
    runtime = await state.predictor.runtime(target)
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
        versions=[str(target.version)],
        platform=PLATFORMS[target.framework],
        inputs=inputs,
        outputs=outputs,
    )


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


async def _infer(
    name: str,
    version: int | None,
    request: Request,
    caller: Caller,
    db: SessionDep,
    state: AppState,
) -> Response:
    await admit(state, caller)
    target = await service.resolve_cached(
        db,
        caller.user,
        name,
        version=version,
        targets=state.target_cache,
        outage=state.outage_cache,
    )
    await db.close()
    body = await request.body()
    return await answer(state, caller, target, name, body, request.headers.get(HEADER_LENGTH))


async def answer(
    state: AppState,
    caller: Caller,
    target: service.Target,
    name: str,
    body: bytes,
    header_length: str | None,
) -> Response:
    """Run an inference request on a resolved version: the route's work after auth and lookup.

    Shared with the fast path (`predictions.fastpath`). `header_length` is the request's
    Inference-Header-Content-Length, if any. A request that does not fit is answered with the
    protocol's error and logged as a failure.

    Raises:
        InvalidInput: the model could not predict the values (logged as a failure).
    """
    predictor = state.predictor
    settings = state.settings
    try:
        header = oip.read_infer_request(
            body,
            json_length=header_length_value(header_length),
            max_elements=settings.max_predict_elements,
        )
        runtime = await predictor.runtime(target)
        # Cheap checks first: whether the declared tensor fits the model costs O(1); building
        # the arrays (a Python loop per element for BYTES) only happens for one that does.
        _check_input(header, runtime, max_rows=settings.max_batch_rows)
        available = ["predictions", "probabilities"] if runtime.has_proba else ["predictions"]
        wanted = oip.select_outputs(header, available)
        parsed = oip.decode_inputs(header)
        matrix = _input_matrix(parsed, runtime)
    except oip.OIPError as exc:
        predictor.record_failure(target, caller=caller, protocol="v2", error=str(exc), inputs=None)
        return v2_error_response(exc.status, str(exc))
    logged_inputs = service.jsonable(matrix) if settings.prediction_log_payloads else None
    outcome = await predictor.predict(
        target, runtime, matrix, caller=caller, protocol="v2", inputs=logged_inputs
    )
    tensors = []
    if "predictions" in wanted:
        tensors.append(_tensor("predictions", outcome.predictions))
    if "probabilities" in wanted and outcome.probabilities is not None:
        tensors.append(_tensor("probabilities", outcome.probabilities.astype(np.float64)))
    content, headers = oip.encode_infer_response(
        model_name=name,
        model_version=str(target.version),
        request_id=parsed.id,
        outputs=tensors,
        binary_outputs=oip.wanted_binary_outputs(parsed, [t.name for t in tensors]),
    )
    return Response(content, headers=headers)


def _check_input(header: oip.InferHeader, runtime: Runtime, *, max_rows: int) -> None:
    """Refuse a request whose declared inputs do not fit the model, before any value is read."""
    if len(header.inputs) != 1:
        raise oip.OIPError(f"the model takes one input tensor; got {len(header.inputs)}")
    tensor = header.inputs[0]
    if tensor.datatype in ("BYTES", "BOOL"):
        raise oip.OIPError(f"input {oip.quote(tensor.name)} must be numeric, not {tensor.datatype}")
    shape = tensor.shape
    width = runtime.n_features
    if len(shape) == 1 and width is not None and shape[0] == width:
        shape = [1, width]  # one row, sent flat
    if len(shape) != 2:
        raise oip.OIPError(f"input {oip.quote(tensor.name)} must have shape [rows, features]")
    if width is not None and shape[1] != width:
        raise oip.OIPError(f"the model takes {width} features; input has {shape[1]}")
    if shape[0] == 0:
        raise oip.OIPError("the input has no rows")
    if shape[0] > max_rows:
        raise oip.OIPError(f"{shape[0]} rows is more than the {max_rows} allowed")


def _input_matrix(request: oip.InferRequest, runtime: Runtime) -> np.ndarray:
    """Return the model's batch from the one input `_check_input` accepted."""
    data = request.inputs[0].data
    if data.ndim == 1:
        data = data.reshape(1, -1)
    # Binary tensors can carry NaN and infinities, which JSON never could.
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise oip.OIPError("input values must be finite numbers")
    matrix = np.ascontiguousarray(data, dtype=runtime.input_dtype)
    # Binary tensors arrive as read-only views over the request body.
    return matrix if matrix.flags.writeable else matrix.copy()


def _tensor(name: str, values: np.ndarray) -> oip.Tensor:
    if values.dtype.kind in "OUS":
        values = np.asarray([str(v) for v in values.ravel()], dtype=object).reshape(values.shape)
        datatype = "BYTES"
    else:
        datatype = oip.to_datatype(values.dtype)
    return oip.Tensor(name=name, datatype=datatype, shape=list(values.shape), data=values)
