"""The upload probe: load, check and try each uploaded model in a fresh, limited child process.

SECURITY.md items 3-4: a refused pickle can poison the process that read it, and crafted
trees or truncated files crash native code. So the server never loads an upload itself: each
upload gets a new process forked from a warm forkserver (which never loads uploads), under
memory, CPU and wall-clock limits, and only JSON comes back.

Probes are bounded per process and per user (#10: 12 concurrent uploads of a 519-byte file ran
12 children of ~800 MB; another user's login then waited 27.6 s for the default thread pool):
a probe past either bound is refused at once with Retry-After, and a probe's blocking calls
(starting the child, waiting for its answer, reaping it) run on the prober's own threads, one
per allowed probe, never on the default pool that password hashing and file I/O share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final, Self

from modelyard.config import Settings
from modelyard.errors import RateLimited, ServiceUnavailable
from modelyard.serving.formats import (
    PICKLE_FORMATS,
    Framework,
    ModelFormat,
    ModelRejected,
    UnsupportedModelFormat,
)
from modelyard.serving.precheck import check_zip_bounds
from modelyard.serving.warmup import MODEL_MODULES

# Imported once by the forkserver, so each forked child starts warm (tens of ms, not seconds).
# The first module pins native thread pools to one thread before numpy and friends load.
# "__main__" first: multiprocessing re-imports the main script in each child unless the
# forkserver already did (and the server's entry point is guarded by __name__ checks).
FORKSERVER_PRELOAD: Final = [
    "__main__",
    "modelyard.serving.threads",
    "numpy",
    "scipy.sparse",
    "sklearn",
    "skops.io",
    "onnx",
    "onnxruntime",
    "xgboost",
    "lightgbm",
    "modelyard.serving.sandbox",
    "modelyard.serving.probe",
    # The estimator modules the allowlist names, so a child does not import them per upload.
    *MODEL_MODULES,
]
# A report is a few KiB; a bigger answer from the child is refused unread.
MAX_REPORT_BYTES: Final = 4 * 1024**2
PROBE_FAILED = "model could not be loaded and probed"
# A warm probe takes 20-50 ms, a slow one up to its timeout: a few seconds is a fair first retry.
PROBE_RETRY_AFTER_SECONDS: Final = 5


@dataclass(frozen=True)
class ProbeReport:
    """What probing an upload found out about the model."""

    framework: Framework
    format: ModelFormat
    task_type: str | None
    n_features: int | None
    feature_names: list[str] | None
    classes: list[int | float | str] | None
    model_class: str
    has_proba: bool
    outputs: list[dict[str, Any]]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """Build a report from the child's JSON answer."""
        return cls(
            framework=Framework(data["framework"]),
            format=ModelFormat(data["format"]),
            task_type=data["task_type"],
            n_features=data["n_features"],
            feature_names=data["feature_names"],
            classes=data["classes"],
            model_class=str(data["model_class"]),
            has_proba=bool(data["has_proba"]),
            outputs=list(data["outputs"]),
        )


def _child_main(
    path: str, fmt: str, memory_limit_bytes: int, timeout_seconds: float, conn: Connection
) -> None:
    """Run in the forked child; the sandbox module is already imported by the forkserver."""
    from modelyard.serving import sandbox

    sandbox.run_probe(path, fmt, memory_limit_bytes, timeout_seconds, conn)


def _wait_for_report(conn: Connection, timeout_seconds: float) -> bytes | None:
    """Wait for the child's answer; None on timeout, b"" when the child died without one."""
    if not conn.poll(timeout_seconds):
        return None
    try:
        return conn.recv_bytes(MAX_REPORT_BYTES)
    except (EOFError, OSError):
        return b""


def _kill(process: Any) -> None:
    """SIGKILL the child and anything it started in its session."""
    if process.exitcode is not None:
        return
    process.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class ModelProber:
    """Loads and probes uploads in disposable child processes."""

    def __init__(
        self,
        *,
        timeout_seconds: float,
        memory_limit_bytes: int,
        allow_pickle: bool,
        max_concurrent: int = 4,
        max_concurrent_per_owner: int = 2,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.memory_limit_bytes = memory_limit_bytes
        self.allow_pickle = allow_pickle
        self.max_concurrent = max_concurrent
        self.max_concurrent_per_owner = max_concurrent_per_owner
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(FORKSERVER_PRELOAD)
        self._running: set[Any] = set()
        # One thread per allowed probe: each probe makes one blocking call at a time.
        self._executor = ThreadPoolExecutor(
            max_workers=max_concurrent, thread_name_prefix="modelyard-probe"
        )
        # Counted on the event loop (no await between a check and its count): no lock needed,
        # and nothing bound to one loop, so a prober may outlive a test's loop.
        self._active = 0
        self._by_owner: dict[Hashable, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build the prober from the probe settings."""
        return cls(
            timeout_seconds=settings.probe_timeout_seconds,
            memory_limit_bytes=settings.probe_memory_bytes,
            allow_pickle=settings.allow_pickle,
            max_concurrent=settings.probe_max_concurrent,
            max_concurrent_per_owner=settings.probe_max_concurrent_per_user,
        )

    @contextlib.contextmanager
    def slot(self, owner: Hashable | None) -> Iterator[None]:
        """Hold one of the process's probe slots, and one of `owner`'s, while the block runs.

        Raises:
            RateLimited: `owner` already runs as many probes as one user may (429).
            ServiceUnavailable: the process already runs as many probes as it may (503).
        """
        if owner is not None and self._by_owner.get(owner, 0) >= self.max_concurrent_per_owner:
            raise RateLimited(
                f"you already have {self.max_concurrent_per_owner} uploads being checked; "
                "retry when one has finished",
                retry_after_seconds=PROBE_RETRY_AFTER_SECONDS,
            )
        if self._active >= self.max_concurrent:
            raise ServiceUnavailable(
                "the server is checking as many uploads as it can; try again shortly",
                retry_after_seconds=PROBE_RETRY_AFTER_SECONDS,
            )
        self._active += 1
        if owner is not None:
            self._by_owner[owner] = self._by_owner.get(owner, 0) + 1
        try:
            yield
        finally:
            self._active -= 1
            if owner is not None:
                left = self._by_owner.pop(owner) - 1
                if left:
                    self._by_owner[owner] = left

    async def probe(
        self, path: Path, fmt: ModelFormat, *, owner: Hashable | None = None
    ) -> ProbeReport:
        """Load, check and predict once with an uploaded model in a fresh child process.

        `owner` (the uploading user's id) counts the probe against that user's bound.

        Raises:
            UnsupportedModelFormat: pickle or joblib while this server refuses them.
            RateLimited: `owner` already runs as many probes as one user may.
            ServiceUnavailable: this process already runs as many probes as it may.
            ModelRejected: the model failed a check, crashed, timed out or ran out of memory.
        """
        if fmt in PICKLE_FORMATS and not self.allow_pickle:
            raise UnsupportedModelFormat("pickle and joblib uploads are disabled on this server")
        with self.slot(owner):
            if fmt is ModelFormat.SKOPS:
                # Reads only the zip's central directory: safe in the server, spares a child.
                await self._blocking(check_zip_bounds, path, self.memory_limit_bytes // 2)
            answer = await self._run_child(path, fmt)
        return self._outcome(answer)

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call on the prober's threads (never the default pool)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _reap(self, process: Any) -> None:
        """Wait for a finished or killed child to exit."""
        try:
            await self._blocking(process.join)
        except RuntimeError:
            # aclose has stopped the threads after killing this child: it exits at once.
            process.join(timeout=1)

    async def _run_child(self, path: Path, fmt: ModelFormat) -> tuple[bytes | None, int | None]:
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_child_main,
            args=(str(path), fmt.value, self.memory_limit_bytes, self.timeout_seconds, sender),
            daemon=True,
        )
        try:
            # start() talks to the forkserver (and starts it, seconds, the first time).
            await self._blocking(process.start)
            self._running.add(process)
            sender.close()  # so the child's death reads as EOF here
            answer = await self._blocking(_wait_for_report, receiver, self.timeout_seconds)
        finally:
            if process.pid is not None:
                if process.is_alive():
                    _kill(process)
                await self._reap(process)
                self._running.discard(process)
            receiver.close()
            sender.close()
        return answer, process.exitcode

    def _outcome(self, answer: tuple[bytes | None, int | None]) -> ProbeReport:
        data, exitcode = answer
        if data is None:
            raise ModelRejected(
                f"model refused: it took longer than {self.timeout_seconds:g} s to load and probe"
            )
        if not data:
            if exitcode is not None and exitcode < 0:
                name = signal.Signals(-exitcode).name
                if -exitcode in {signal.SIGXCPU, signal.SIGKILL}:
                    raise ModelRejected(
                        f"model refused: it took longer than {self.timeout_seconds:g} s of CPU "
                        f"to load and probe (signal {name})"
                    )
                raise ModelRejected(f"model refused: model crashed the loader (signal {name})")
            raise ModelRejected(f"model refused: the loader exited without an answer ({exitcode})")
        try:
            message = json.loads(data)
            status = message["status"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelRejected(f"model refused: {PROBE_FAILED}") from exc
        if status == "ok":
            try:
                return ProbeReport.from_json(message["report"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelRejected(f"model refused: {PROBE_FAILED}") from exc
        if status == "memory":
            raise ModelRejected(
                f"model refused: model needs more than "
                f"{self.memory_limit_bytes // 1024**2} MiB to load"
            )
        raise ModelRejected(str(message.get("reason") or f"model refused: {PROBE_FAILED}"))

    async def aclose(self) -> None:
        """Kill probes still running (their uploads are abandoned) and stop the probe threads."""
        for process in list(self._running):
            _kill(process)
        self._executor.shutdown(wait=False)
