"""Pay the one-time costs of loading models at start-up, not on the first upload or prediction.

Restricted loading imports each estimator's module by name the first time a model uses it
(scikit-learn's submodules take a second or more together), and the probe's forkserver takes
seconds to start. Both happen in a background thread while the server already answers.
"""

from __future__ import annotations

import gc
import importlib
import logging
import time
from multiprocessing import forkserver

from modelyard.serving.loader import ALLOWED_GLOBALS

log = logging.getLogger(__name__)

# The loaders (imported lazily by serving.loader: skops alone takes over half a second), and
# every module the allowlist names: what a legitimate model can make the loader import.
LOADER_MODULES = ["skops.io", "onnx", "onnxruntime", "xgboost", "lightgbm"]
MODEL_MODULES = LOADER_MODULES + sorted(
    {module for module, _ in ALLOWED_GLOBALS} - {"builtins", "__builtin__"}
)


def import_model_modules() -> None:
    """Import the modules models are made of (each at most once per process)."""
    for name in MODEL_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # a private module a newer library moved: loading will say so
            log.debug("warmup_import_failed", extra={"module": name})


def warm_up() -> None:
    """Import the model modules and start the probe's forkserver (blocking; run in a thread)."""
    started = time.perf_counter()
    import_model_modules()
    forkserver.ensure_running()
    # Everything imported so far lives as long as the process: move it out of the collector's
    # sight, or each full collection walks millions of library objects and stalls requests for
    # hundreds of milliseconds (the p99 spikes under load).
    gc.freeze()
    log.info("warmed_up", extra={"duration_ms": round((time.perf_counter() - started) * 1000)})
