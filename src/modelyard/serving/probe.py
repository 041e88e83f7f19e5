"""The upload probe: load, check and try each uploaded model in a fresh, limited child process.

SECURITY.md items 3-4: a refused pickle can poison the process that read it, and crafted
trees or truncated files crash native code. So the server never loads an upload itself: each
upload gets a new process forked from a warm forkserver (which never loads uploads), under
memory, CPU and wall-clock limits, and only JSON comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final, Self

from modelyard.config import Settings
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
        self, *, timeout_seconds: float, memory_limit_bytes: int, allow_pickle: bool
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.memory_limit_bytes = memory_limit_bytes
        self.allow_pickle = allow_pickle
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(FORKSERVER_PRELOAD)
        self._running: set[Any] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build the prober from the probe settings."""
        return cls(
            timeout_seconds=settings.probe_timeout_seconds,
            memory_limit_bytes=settings.probe_memory_bytes,
            allow_pickle=settings.allow_pickle,
        )

    async def probe(self, path: Path, fmt: ModelFormat) -> ProbeReport:
        """Load, check and predict once with an uploaded model in a fresh child process.

        Raises:
            UnsupportedModelFormat: pickle or joblib while this server refuses them.
            ModelRejected: the model failed a check, crashed, timed out or ran out of memory.
        """
        if fmt in PICKLE_FORMATS and not self.allow_pickle:
            raise UnsupportedModelFormat("pickle and joblib uploads are disabled on this server")
        if fmt is ModelFormat.SKOPS:
            # Reads only the zip's central directory: safe in the server, and it spares a child.
            await asyncio.to_thread(check_zip_bounds, path, self.memory_limit_bytes // 2)
        answer = await self._run_child(path, fmt)
        return self._outcome(answer)

    async def _run_child(self, path: Path, fmt: ModelFormat) -> tuple[bytes | None, int | None]:
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_child_main,
            args=(str(path), fmt.value, self.memory_limit_bytes, self.timeout_seconds, sender),
            daemon=True,
        )
        try:
            # start() talks to the forkserver (and starts it, seconds, the first time).
            await asyncio.to_thread(process.start)
            self._running.add(process)
            sender.close()  # so the child's death reads as EOF here
            answer = await asyncio.to_thread(_wait_for_report, receiver, self.timeout_seconds)
        finally:
            if process.pid is not None:
                if process.is_alive():
                    _kill(process)
                await asyncio.to_thread(process.join)
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
        """Kill probes still running (their uploads are abandoned)."""
        for process in list(self._running):
            _kill(process)
