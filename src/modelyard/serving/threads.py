"""How many threads one ONNX Runtime call of a server process uses (its intra-op threads).

A host runs `workers` server processes; each runs one call per model at a time (adaptive
batching merges concurrent requests into it). With `cores // workers` threads a call, the
workers' calls together use the cores without oversubscribing them: more threads than cores
only add context switches to every call. The upload probe and batch jobs keep one thread.
"""

from __future__ import annotations

import os

# `MODELYARD_ONNX_INTRA_OP_THREADS=0`: choose from the cores and the workers.
AUTO = 0

_onnx_threads = 1


def available_cores() -> int:
    """Return the cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def onnx_threads_per_worker(configured: int, workers: int, cores: int | None = None) -> int:
    """Return the intra-op threads of one ONNX call: `configured`, or with AUTO the cores
    shared out between the workers (at least one each)."""
    if configured != AUTO:
        return configured
    return max(1, (available_cores() if cores is None else cores) // max(1, workers))


def configure_onnx_threads(threads: int) -> None:
    """Open the ONNX sessions of this process from now on with `threads` intra-op threads."""
    global _onnx_threads
    _onnx_threads = max(1, threads)


def onnx_threads() -> int:
    """Return the intra-op threads the ONNX sessions of this process open with."""
    return _onnx_threads
