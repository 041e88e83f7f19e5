"""The upload probe's client: each upload is loaded, checked and tried in a fresh, limited child.

docs/architecture/security-notes.md, items 3-4: a refused pickle can poison the process that read it, and crafted
trees or truncated files crash native code. So the server never loads an upload itself: the
host's probe process (modelyard.serving.probehost, one per host, shared by its workers) forks
a new child for each upload under memory, CPU and wall-clock limits, and only JSON comes back.

Probes are bounded per user and in total (#10: 12 concurrent uploads of a 519-byte file ran
12 children of ~800 MB; another user's login then waited 27.6 s for the default thread pool):
a probe past either bound is refused at once with Retry-After. Each worker counts its own probes
(refused without asking), and the probe process counts the host's with the same bounds, so
however many workers a host runs, at most `max_concurrent` children exist on it and at most
`max_concurrent_per_owner` belong to one user. Waiting for an answer is a socket read on the
event loop; the few blocking calls (starting the probe process, reading a zip's directory) run
on the prober's own threads, never on the default pool that password hashing and file I/O share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import tempfile
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final, Protocol, Self

from modelyard.config import Settings
from modelyard.errors import NotFound, RateLimited, ServiceUnavailable
from modelyard.serving import probehost
from modelyard.serving.formats import (
    PICKLE_FORMATS,
    Framework,
    ModelFormat,
    ModelRejected,
    UnsupportedModelFormat,
)
from modelyard.serving.onnx_cost import CostLimits
from modelyard.serving.precheck import check_zip_bounds

PROBE_FAILED = "model could not be loaded and probed"
# A warm probe takes 20-50 ms, a slow one up to its timeout: a few seconds is a fair first retry.
PROBE_RETRY_AFTER_SECONDS: Final = 5
# Past the child's own timeout, how long an answer may take: the probe process may still be
# importing the model libraries (seconds, more on a busy host) when the first upload arrives.
HOST_SLACK_SECONDS: Final = 60.0
# The answer is one JSON line carrying the child's report (ASCII JSON, escaped once more).
MAX_ANSWER_BYTES: Final = 2 * probehost.MAX_REPORT_BYTES + 64 * 1024


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
    # ONNX models: each input tensor's name, dtype and shape (-1 for a dynamic dimension), and
    # the cost estimate of the largest call (modelyard.serving.onnx_cost.OnnxCost.as_json).
    inputs: list[dict[str, Any]] | None = None
    cost: dict[str, Any] | None = None

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
            inputs=data.get("inputs"),
            cost=data.get("cost"),
        )


@cache
def _private_socket_path() -> Path:
    """A probe process of this Python process's own, for probers built without a data folder."""
    return Path(tempfile.mkdtemp(prefix="modelyard-probe-")) / probehost.SOCKET_NAME


class Prober(Protocol):
    """What the upload path needs of a prober."""

    def slot(self, owner: Hashable | None) -> contextlib.AbstractContextManager[None]:
        """Hold one of the process's probe slots, and one of `owner`'s."""

    async def probe(
        self, path: Path, fmt: ModelFormat, *, owner: Hashable | None = None
    ) -> ProbeReport:
        """Load, check and predict once with an uploaded model in a fresh child process."""

    def start(self) -> None:
        """Have the host's probe process running (blocking, ~0.1 s)."""

    async def aclose(self) -> None:
        """Let go of the probe process."""


class UploadsNotServed(NotFound):
    """This process does not take uploads (MODELYARD_ROLE=serving)."""

    def __init__(self) -> None:
        super().__init__("uploads are not served here")


class NoProber:
    """The prober of a `serving` process: no probe process, every upload refused (404)."""

    host_pid: int | None = None

    def slot(self, owner: Hashable | None) -> contextlib.AbstractContextManager[None]:
        """Refuse: nothing is probed here.

        Raises:
            UploadsNotServed: always.
        """
        raise UploadsNotServed

    async def probe(
        self, path: Path, fmt: ModelFormat, *, owner: Hashable | None = None
    ) -> ProbeReport:
        """Refuse: nothing is probed here.

        Raises:
            UploadsNotServed: always.
        """
        raise UploadsNotServed

    def start(self) -> None:
        """Start nothing."""

    async def aclose(self) -> None:
        """Close nothing."""


def onnx_cost_limits(settings: Settings) -> CostLimits:
    """Return the largest request an ONNX model must answer and its budgets, from settings."""
    return CostLimits(
        max_rows=settings.max_batch_rows,
        max_elements=settings.max_predict_elements,
        dynamic_dim=settings.onnx_dynamic_dim,
        max_flops=settings.onnx_max_flops_per_request,
        max_memory_bytes=settings.onnx_max_memory_bytes_per_request,
    )


class ModelProber:
    """Loads and probes uploads in disposable children of the host's probe process."""

    def __init__(
        self,
        *,
        timeout_seconds: float,
        memory_limit_bytes: int,
        allow_pickle: bool,
        max_concurrent: int = 4,
        max_concurrent_per_owner: int = 2,
        socket_path: Path | None = None,
        cost_limits: CostLimits | None = None,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.memory_limit_bytes = memory_limit_bytes
        self.allow_pickle = allow_pickle
        self.max_concurrent = max_concurrent
        self.max_concurrent_per_owner = max_concurrent_per_owner
        self.socket_path = socket_path or _private_socket_path()
        self.cost_limits = cost_limits or CostLimits()
        # Held open while this prober lives: the probe process exits after its last lease.
        self._lease: socket.socket | None = None
        self._lease_lock = threading.Lock()
        self._closed = False
        self.host_pid: int | None = None
        # One thread per allowed probe: each probe makes at most one blocking call at a time.
        self._executor = ThreadPoolExecutor(
            max_workers=max_concurrent, thread_name_prefix="modelyard-probe"
        )
        # Counted on the event loop (no await between a check and its count): no lock needed,
        # and nothing bound to one loop, so a prober may outlive a test's loop.
        self._active = 0
        self._by_owner: dict[Hashable, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build the prober from the probe settings; it shares the host's probe process."""
        return cls(
            timeout_seconds=settings.probe_timeout_seconds,
            memory_limit_bytes=settings.probe_memory_bytes,
            allow_pickle=settings.allow_pickle,
            max_concurrent=settings.probe_max_concurrent,
            max_concurrent_per_owner=settings.probe_max_concurrent_per_user,
            socket_path=probehost.socket_path(settings.data_dir, settings.probe_socket),
            cost_limits=onnx_cost_limits(settings),
        )

    def start(self) -> None:
        """Have the host's probe process running and hold a lease on it (blocking, ~0.1 s).

        Raises:
            ProbeHostUnavailable: the probe process could not be started.
        """
        with self._lease_lock:
            if self._closed:
                raise probehost.ProbeHostUnavailable("the prober is closed")
            if self._lease is not None:
                readable, _, _ = select.select([self._lease], [], [], 0)
                if not readable:
                    return  # a lease says nothing: readable means the probe process is gone
                self._lease.close()
                self._lease = None
            started = probehost.ensure_running(self.socket_path)
            if started is not None:
                # The probe process outlives this prober while other processes lease it; a
                # thread reaps it whenever it exits.
                threading.Thread(target=started.wait, daemon=True).start()
            try:
                self._lease, self.host_pid = probehost.lease(self.socket_path)
            except OSError as exc:
                raise probehost.ProbeHostUnavailable(str(exc)) from exc
            # A prober dropped without aclose (a script, a test) still lets go of its lease.
            weakref.finalize(self, self._lease.close)

    @contextlib.contextmanager
    def slot(self, owner: Hashable | None) -> Iterator[None]:
        """Hold one of the process's probe slots, and one of `owner`'s, while the block runs.

        Raises:
            RateLimited: `owner` already runs as many probes as one user may (429).
            ServiceUnavailable: the process already runs as many probes as it may (503).
        """
        if owner is not None and self._by_owner.get(owner, 0) >= self.max_concurrent_per_owner:
            raise self._owner_busy()
        if self._active >= self.max_concurrent:
            raise self._host_busy()
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

    def _owner_busy(self) -> RateLimited:
        return RateLimited(
            f"you already have {self.max_concurrent_per_owner} uploads being checked; "
            "retry when one has finished",
            retry_after_seconds=PROBE_RETRY_AFTER_SECONDS,
        )

    def _host_busy(self) -> ServiceUnavailable:
        return ServiceUnavailable(
            "the server is checking as many uploads as it can; try again shortly",
            retry_after_seconds=PROBE_RETRY_AFTER_SECONDS,
        )

    async def probe(
        self, path: Path, fmt: ModelFormat, *, owner: Hashable | None = None
    ) -> ProbeReport:
        """Load, check and predict once with an uploaded model in a fresh child process.

        `owner` (the uploading user's id) counts the probe against that user's bound.

        Raises:
            UnsupportedModelFormat: pickle or joblib while this server refuses them.
            RateLimited: `owner` already runs as many probes as one user may.
            ServiceUnavailable: the host already runs as many probes as it may, or its probe
                process cannot be reached.
            ModelRejected: the model failed a check, crashed, timed out or ran out of memory.
        """
        if fmt in PICKLE_FORMATS and not self.allow_pickle:
            raise UnsupportedModelFormat("pickle and joblib uploads are disabled on this server")
        with self.slot(owner):
            if fmt is ModelFormat.SKOPS:
                # Reads only the zip's central directory: safe in the server, spares a child.
                await self._blocking(check_zip_bounds, path, self.memory_limit_bytes // 2)
            # The probe process may run in another folder than this one.
            absolute = await self._blocking(os.path.abspath, path)
            answer = await self._ask(
                {
                    "op": "probe",
                    "path": absolute,
                    "format": fmt.value,
                    "memory_limit_bytes": self.memory_limit_bytes,
                    "timeout_seconds": self.timeout_seconds,
                    "owner": None if owner is None else str(owner),
                    "max_concurrent": self.max_concurrent,
                    "max_per_owner": self.max_concurrent_per_owner,
                    "cost_limits": self.cost_limits.as_json(),
                }
            )
        return self._outcome(answer)

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call on the prober's threads (never the default pool)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request to the host's probe process and wait for its answer.

        A probe process that is gone (its last lease ended, or it was killed) is started again
        and asked once more: a probe is a fresh child each time, so asking twice is harmless.
        """
        for attempt in range(2):
            try:
                await self._blocking(self.start)
                return await self._exchange(request)
            except (OSError, EOFError, probehost.ProbeHostUnavailable) as exc:
                if attempt:
                    raise ServiceUnavailable(
                        "uploads cannot be checked right now; try again shortly",
                        retry_after_seconds=PROBE_RETRY_AFTER_SECONDS,
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(
            str(self.socket_path), limit=MAX_ANSWER_BYTES
        )
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            try:
                line = await asyncio.wait_for(
                    reader.readline(), self.timeout_seconds + HOST_SLACK_SECONDS
                )
            except TimeoutError as exc:
                # Closing the connection below tells the probe process to kill the child.
                raise ServiceUnavailable(
                    "the upload checker did not answer in time; try again shortly",
                    retry_after_seconds=PROBE_RETRY_AFTER_SECONDS,
                ) from exc
            except ValueError as exc:  # past MAX_ANSWER_BYTES
                raise ModelRejected(f"model refused: {PROBE_FAILED}") from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if not line.endswith(b"\n"):
            raise EOFError("the probe process closed the connection without an answer")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _outcome(self, answer: dict[str, Any]) -> ProbeReport:
        if answer.get("outcome") == "busy":
            raise self._owner_busy() if answer.get("scope") == "owner" else self._host_busy()
        report, exitcode = answer.get("report"), answer.get("exitcode")
        if report is None:
            raise ModelRejected(
                f"model refused: it took longer than {self.timeout_seconds:g} s to load and probe"
            )
        if not report:
            if isinstance(exitcode, int) and exitcode < 0:
                name = signal.Signals(-exitcode).name
                if -exitcode in {signal.SIGXCPU, signal.SIGKILL}:
                    raise ModelRejected(
                        f"model refused: it took longer than {self.timeout_seconds:g} s of CPU "
                        f"to load and probe (signal {name})"
                    )
                raise ModelRejected(f"model refused: model crashed the loader (signal {name})")
            raise ModelRejected(f"model refused: the loader exited without an answer ({exitcode})")
        try:
            message = json.loads(report)
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
        """Let go of the probe process (it exits after its last lease) and stop the threads.

        Probes still running are abandoned: their connections close, and the probe process
        kills their children.
        """
        with self._lease_lock:
            self._closed = True
            if self._lease is not None:
                self._lease.close()
                self._lease = None
        self._executor.shutdown(wait=False)
