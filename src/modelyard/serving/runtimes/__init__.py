"""Loaded model versions behind one interface: verify, load and wrap an artifact per framework.

docs/architecture/security-notes.md, at serve time: fetch, verify sha256, load (the restricted loader the upload probe
used), check structure; the cache (modelyard.serving.cache) keeps the result.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
from pathlib import Path

from modelyard.artifacts.store import ArtifactStore
from modelyard.observability.metrics import Metrics
from modelyard.serving.formats import FRAMEWORK_OF, Framework, ModelFormat
from modelyard.serving.loader import load_checked_model
from modelyard.serving.runtimes.base import ArtifactCorrupted, Runtime, estimate_nbytes
from modelyard.serving.runtimes.lightgbm import LightGBMRuntime
from modelyard.serving.runtimes.onnx import (
    DEFAULT_RUN_TIMEOUT_SECONDS,
    OnnxRuntime,
    ensure_onnx_memory_cap,
)
from modelyard.serving.runtimes.sklearn import SklearnRuntime
from modelyard.serving.runtimes.xgboost import XGBoostRuntime
from modelyard.serving.threads import onnx_threads

log = logging.getLogger(__name__)


def load_runtime(
    data: bytes,
    fmt: ModelFormat,
    *,
    sha256: str,
    run_timeout_seconds: float = DEFAULT_RUN_TIMEOUT_SECONDS,
) -> Runtime:
    """Verify an artifact's digest, load it with the restricted loader and wrap it in a Runtime.

    CPU-bound (hashing, unpickling, tree checks, one prediction on zeros): call it in a thread.

    Raises:
        ArtifactCorrupted: the bytes do not hash to `sha256`; nothing was loaded.
        ModelRejected: the model failed a loader or structure check, or could not predict.
    """
    if hashlib.sha256(data).hexdigest() != sha256.lower():
        raise ArtifactCorrupted
    nbytes = estimate_nbytes(data, fmt)
    if FRAMEWORK_OF[fmt] is Framework.ONNX:
        ensure_onnx_memory_cap()  # before the session: sessions keep the arena they start with
    # load_model reads a path: the same code path as the upload probe, for every format.
    with tempfile.TemporaryDirectory(prefix="modelyard-load-") as folder:
        path = Path(folder) / "artifact"
        path.write_bytes(data)
        model, cost = load_checked_model(path, fmt, onnx_threads=onnx_threads())
    runtime: Runtime
    match FRAMEWORK_OF[fmt]:
        case Framework.SKLEARN:
            runtime = SklearnRuntime(model, fmt, nbytes=nbytes)
        case Framework.ONNX:
            return OnnxRuntime(model, data, nbytes=nbytes, run_timeout_seconds=run_timeout_seconds)
        case Framework.XGBOOST:
            runtime = XGBoostRuntime(model, fmt, nbytes=nbytes)
        case Framework.LIGHTGBM:
            # load_model has already checked that the text decodes.
            runtime = LightGBMRuntime(model, data.decode("utf-8"), nbytes=nbytes)
    # What the structure check measured decides whether calls may run on the event loop.
    runtime.is_cost_bounded_by_shape = cost is not None and cost.is_bounded_by_shape
    return runtime


async def fetch_runtime(
    store: ArtifactStore,
    *,
    key: str,
    sha256: str,
    fmt: ModelFormat,
    metrics: Metrics,
    run_timeout_seconds: float = DEFAULT_RUN_TIMEOUT_SECONDS,
) -> Runtime:
    """Read an artifact from the store and load it off the event loop.

    Raises:
        ObjectNotFound: the store has no object under `key`.
        StorageUnavailable: the store cannot be reached.
        ArtifactCorrupted: the object does not hash to `sha256`.
        ModelRejected: the model failed a check while loading.
    """
    started = time.perf_counter()
    data = await store.read_bytes(key)
    # Hashing and loading take milliseconds to seconds of CPU; on the loop they would stall
    # every other request of this process for that long.
    runtime = await asyncio.to_thread(
        load_runtime, data, fmt, sha256=sha256, run_timeout_seconds=run_timeout_seconds
    )
    seconds = time.perf_counter() - started
    metrics.model_load_time.labels(framework=runtime.framework.value).observe(seconds)
    log.info(
        "model_loaded",
        extra={
            "framework": runtime.framework.value,
            "format": fmt.value,
            "artifact_bytes": len(data),
            "estimated_bytes": runtime.nbytes,
            "seconds": round(seconds, 4),
        },
    )
    return runtime


__all__ = ["ArtifactCorrupted", "Runtime", "fetch_runtime", "load_runtime"]
