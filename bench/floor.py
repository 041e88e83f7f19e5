"""The floor: a bare ASGI app that calls the model directly, with nothing else on the path.

No auth, no logging, no validation beyond what a crash needs: orjson parses the body,
`predict` and `predict_proba` run on the event loop, and the answer has Modelyard's shape.
`*.onnx` files (bench/dl.py's networks) are ONNX Runtime sessions with Modelyard's intra-op
threads (`BENCH_FLOOR_THREADS`), answering V2 binary requests with binary outputs.
Served by uvicorn with the same worker count as Modelyard:

    BENCH_FLOOR_MODELS=DIR uvicorn floor:app --app-dir bench --workers 2
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import skops.io

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODELS: dict[str, Any] = {}
SESSIONS: dict[str, Any] = {}
V2_DTYPES = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64, "INT32": np.int32}
MODEL_IDS: dict[str, str] = {}
NATIVE_PREFIX = "/api/v1/predict/"
V2_PREFIX = "/v2/models/"
JSON_HEADERS = [(b"content-type", b"application/json")]


def load_models() -> None:
    """Load every `*.skops` file of `$BENCH_FLOOR_MODELS` (the bench's own files: trusted)."""
    for path in sorted(Path(os.environ["BENCH_FLOOR_MODELS"]).glob("*.skops")):
        trusted = skops.io.get_untrusted_types(file=path)
        MODELS[path.stem] = skops.io.load(path, trusted=trusted)
        MODEL_IDS[path.stem] = str(uuid.uuid5(uuid.NAMESPACE_URL, path.stem))
    onnx = sorted(Path(os.environ["BENCH_FLOOR_MODELS"]).glob("*.onnx"))
    if onnx:
        import onnxruntime as ort

        # The session options Modelyard's are made with: its threads, and a shared CPU arena
        # (which makes small networks' runs about twice as fast as ONNX Runtime's default).
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(1024**3, -1, -1, -1))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("BENCH_FLOOR_THREADS", "1"))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.use_env_allocators", "1")
        for path in onnx:
            SESSIONS[path.stem] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )


def v2_binary(name: str, body: bytes, header_length: int) -> tuple[bytes, int]:
    """Run a network on a V2 request with binary inputs; answer its outputs as binary."""
    session = SESSIONS[name]
    request = orjson.loads(body[:header_length])
    feeds = {}
    offset = header_length
    for tensor in request["inputs"]:
        size = tensor["parameters"]["binary_data_size"]
        dtype = np.dtype(V2_DTYPES[tensor["datatype"]])
        array = np.frombuffer(body, dtype, count=size // dtype.itemsize, offset=offset)
        feeds[tensor["name"]] = array.reshape(tensor["shape"])
        offset += size
    names = [output.name for output in session.get_outputs()]
    results = session.run(names, feeds)
    outputs = []
    chunks = []
    for output, value in zip(names, results, strict=True):
        chunk = np.ascontiguousarray(value).tobytes()
        chunks.append(chunk)
        outputs.append(
            {
                "name": output,
                "datatype": "FP32",
                "shape": list(value.shape),
                "parameters": {"binary_data_size": len(chunk)},
            }
        )
    header = orjson.dumps({"model_name": name, "model_version": "1", "outputs": outputs})
    return b"".join([header, *chunks]), len(header)


def predict(name: str, rows: np.ndarray[Any, Any]) -> dict[str, Any]:
    """Run the model once and answer like Modelyard's native route."""
    model = MODELS[name]
    started = time.perf_counter()
    labels = model.predict(rows)
    proba = model.predict_proba(rows)
    elapsed_ms = (time.perf_counter() - started) * 1000
    return {
        "prediction_id": str(uuid.uuid4()),
        "model_id": MODEL_IDS[name],
        "model_name": name,
        "version": 1,
        "predictions": labels.tolist(),
        "probabilities": proba.tolist(),
        "classes": model.classes_.tolist(),
        "confidence": proba.max(axis=1).tolist(),
        "inference_time_ms": elapsed_ms,
    }


def native(name: str, body: bytes) -> dict[str, Any]:
    rows = np.asarray(orjson.loads(body)["inputs"], dtype=np.float64)
    return predict(name, rows)


def v2(name: str, body: bytes) -> dict[str, Any]:
    request = orjson.loads(body)
    tensor = request["inputs"][0]
    rows = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
    answer = predict(name, rows)
    n = len(answer["predictions"])
    return {
        "model_name": name,
        "model_version": "1",
        "id": request.get("id") or answer["prediction_id"],
        "outputs": [
            {
                "name": "predictions",
                "datatype": "INT64",
                "shape": [n],
                "data": answer["predictions"],
            },
            {
                "name": "probabilities",
                "datatype": "FP64",
                "shape": [n, len(answer["classes"])],
                "data": [p for row in answer["probabilities"] for p in row],
            },
        ],
    }


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send: Send, status: int, document: Any) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": orjson.dumps(document)})


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            load_models()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if path == "/health":
        await respond(send, 200, {"status": "ok"})
        return
    if scope["method"] == "POST" and path.startswith(NATIVE_PREFIX):
        handler, name = native, path.removeprefix(NATIVE_PREFIX)
    elif scope["method"] == "POST" and path.startswith(V2_PREFIX) and path.endswith("/infer"):
        handler, name = v2, path.removeprefix(V2_PREFIX).removesuffix("/infer")
    else:
        await respond(send, 404, {"error": "not found"})
        return
    body = await read_body(receive)
    if name in SESSIONS:
        headers = dict(scope["headers"])
        content, length = v2_binary(name, body, int(headers[b"inference-header-content-length"]))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"inference-header-content-length", str(length).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})
        return
    if name not in MODELS:
        await respond(send, 404, {"error": f"model {name!r} not found"})
        return
    try:
        document = handler(name, body)
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        await respond(send, 422, {"error": str(exc)})
        return
    await respond(send, 200, document)
