"""Import what the models a process will serve need, before it takes its first request.

A framework is imported where it is used: loading the first model of a framework imports it
(modelyard.serving.loader), and a process that never serves ONNX, XGBoost or LightGBM never
pays for them (~50 MiB together). Importing scikit-learn and skops takes a second or more,
though, which the first prediction of a freshly uploaded model should not wait for: so at
start-up a process imports the frameworks its registry's versions use (scikit-learn when the
registry is empty: the commonest first upload), while the host's probe process starts.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from sqlalchemy.exc import SQLAlchemyError

from modelyard.serving.formats import Framework
from modelyard.serving.probe import Prober
from modelyard.serving.probehost import (
    ProbeHostUnavailable,
    WithoutPyarrow,
    keep_array_backends_out,
)
from modelyard.serving.runtimes.onnx import ensure_onnx_memory_cap

log = logging.getLogger(__name__)

# What loading a model of each framework imports (skops.io lists every scikit-learn estimator
# when it is imported, so it brings the estimator modules along).
FRAMEWORK_MODULES: Final[dict[Framework, tuple[str, ...]]] = {
    Framework.SKLEARN: ("sklearn", "skops.io"),
    Framework.ONNX: ("onnx", "onnxruntime"),
    Framework.XGBOOST: ("xgboost",),
    Framework.LIGHTGBM: ("lightgbm",),
}
# Warmed when the registry has no version yet (or cannot be read at start).
DEFAULT_FRAMEWORKS: Final = frozenset({Framework.SKLEARN})
# Asking the registry which frameworks it holds; a slow database skips that.
QUERY_TIMEOUT_SECONDS: Final = 2.0


async def warm_up_process(
    prober: Prober, frameworks_in_use: Callable[[], Awaitable[set[Framework]]]
) -> None:
    """Have the host's probe process started, then import what the models need.

    `frameworks_in_use` tells which frameworks the registry's versions use (the caller asks the
    registry: serving sits below it); when it fails or is slow, the default frameworks are used.
    """
    try:
        # Ahead of the first upload (`modelyard serve` has usually started it already).
        await asyncio.to_thread(prober.start)
    except ProbeHostUnavailable as exc:
        log.warning("probe_start_failed", extra={"error": str(exc)})
    frameworks: frozenset[Framework] | set[Framework] = DEFAULT_FRAMEWORKS
    try:
        async with asyncio.timeout(QUERY_TIMEOUT_SECONDS):
            frameworks = await frameworks_in_use() or DEFAULT_FRAMEWORKS
    except (TimeoutError, OSError, SQLAlchemyError) as exc:
        log.warning("warmup_query_failed", extra={"error": type(exc).__name__})
    await asyncio.to_thread(warm_up, frameworks)


def warm_up(frameworks: Iterable[Framework]) -> None:
    """Import the modules the given frameworks' models need (blocking; run in a thread).

    pyarrow stays out meanwhile: scikit-learn and XGBoost import pandas, which imports pyarrow
    whenever it is installed (~35 MiB per process), though models never need it. The code that
    reads Parquet (batch jobs, drift references) imports pyarrow itself when it does.
    """
    started = time.perf_counter()
    wanted = sorted(set(frameworks))
    hidden = WithoutPyarrow()
    sys.meta_path.insert(0, hidden)
    # skops.io would import torch where it is installed (probehost.WithoutArrayBackends).
    keep_array_backends_out()
    try:
        for framework in wanted:
            for name in FRAMEWORK_MODULES[framework]:
                try:
                    importlib.import_module(name)
                except ImportError:  # an optional framework not installed: loading will say so
                    log.warning("warmup_import_failed", extra={"module": name})
    finally:
        sys.meta_path.remove(hidden)
    if Framework.ONNX in wanted:
        ensure_onnx_memory_cap()
    # Everything imported so far lives as long as the process: move it out of the collector's
    # sight, or each full collection walks millions of library objects and stalls requests for
    # hundreds of milliseconds (the p99 spikes under load).
    gc.freeze()
    log.info(
        "warmed_up",
        extra={
            "frameworks": [f.value for f in wanted],
            "duration_ms": round((time.perf_counter() - started) * 1000),
        },
    )
