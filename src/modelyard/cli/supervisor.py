"""`modelyard serve --workers N`: import the serving stack once, then fork the workers from it.

Uvicorn's supervisor starts each worker as a fresh interpreter (multiprocessing's `spawn`), which
imports FastAPI, SQLAlchemy, numpy, SciPy, scikit-learn and skops on its own: ~265 MiB a worker,
most of it the same bytes. Here the `serve` process imports them first (`preload`), moves them
out of the garbage collector's sight, and uvicorn's supervisor forks each worker, and each
replacement, from that state (`forked_workers`): those pages stay shared, copy-on-write, until a
worker writes to them.

Before a fork the supervisor has only imported: no thread of its own, no event loop, no
connection to the database or Redis (each worker builds the app and connects). Native pools that
start on import are fork-aware: OpenBLAS (numpy's and SciPy's) stops its threads before a fork
and starts them again in the child when a call needs them. ONNX Runtime starts a thread when it
is imported, so it is left to the workers that serve ONNX models (`serving.warmup`).

Everything else is uvicorn's supervisor as it was: health pings, a crashed or hung worker
replaced, SIGTERM draining every worker, SIGHUP replacing the workers one by one, SIGTTIN and
SIGTTOU adding and removing one. A replacement runs the code the supervisor imported at start:
restart `serve` to run new code.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import signal
import threading
from collections.abc import Callable, Iterator
from multiprocessing.context import ForkProcess
from socket import socket

from uvicorn._subprocess import subprocess_started
from uvicorn.config import Config
from uvicorn.supervisors import multiprocess


def preload() -> None:
    """Import the app and what the default warm-up imports (scikit-learn, skops), then freeze it.

    The collector is off meanwhile, as Python's `gc.freeze` documentation advises: objects freed
    during the imports would leave holes in the shared pages, which the workers' first
    allocations would fill, copying those pages.
    """
    gc.disable()
    try:
        importlib.import_module("modelyard.app")
        from modelyard.serving.warmup import DEFAULT_FRAMEWORKS, warm_up

        warm_up(DEFAULT_FRAMEWORKS)
    finally:
        # The workers' collections then never touch (and copy) what the imports made.
        gc.freeze()
        gc.enable()


@contextlib.contextmanager
def forked_workers() -> Iterator[None]:
    """Have uvicorn's supervisor fork its workers from this process instead of spawning them.

    Raises:
        RuntimeError: this process runs a Python thread besides the main one; a fork would copy
            whatever that thread holds locked at that moment.
    """
    if threading.active_count() > 1:
        raise RuntimeError(
            f"the supervisor must not run threads before it forks: {threading.enumerate()}"
        )
    # Uvicorn's supervisor calls it for every worker it starts (at start, after a crash, on
    # SIGHUP and SIGTTIN); it imports the name without exporting it, hence the ignores.
    original = multiprocess.get_subprocess  # type: ignore[attr-defined]
    multiprocess.get_subprocess = _fork_worker  # type: ignore[attr-defined,assignment]
    try:
        yield
    finally:
        multiprocess.get_subprocess = original  # type: ignore[attr-defined]


class _ForkedWorker(ForkProcess):
    """A worker forked with the supervisor's signals blocked until it has dropped its handlers.

    The supervisor's handlers only queue a signal for its own loop: a SIGTERM reaching a new
    worker before it drops them would be queued where nobody reads it, and the supervisor
    would wait for that worker for good. Blocked, it waits until the worker's own handlers
    (Python's defaults, then uvicorn's) are in place.
    """

    def start(self) -> None:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, multiprocess.SIGNALS)
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _fork_worker(config: Config, target: Callable[..., None], sockets: list[socket]) -> ForkProcess:
    return _ForkedWorker(target=_worker_main, args=(config, target, sockets))


def _worker_main(config: Config, target: Callable[..., None], sockets: list[socket]) -> None:
    """Run in the forked worker: what a spawned one would start with, then uvicorn's server."""
    # A spawned worker starts with Python's handlers; uvicorn's server installs its own for
    # SIGINT and SIGTERM when it starts.
    for sig in multiprocess.SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, multiprocess.SIGNALS)
    subprocess_started(config, target, sockets, stdin_fileno=None)
