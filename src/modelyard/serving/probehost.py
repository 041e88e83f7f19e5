"""The host's upload probe: one process per host that forks a fresh, limited child per upload.

docs/architecture/security-notes.md, items 3-4: the server never loads an upload; each one is loaded in a new child under
memory, CPU and wall-clock limits, and only JSON comes back. Importing the model libraries takes
seconds and ~150 MiB, so one process per host does it once (at `modelyard serve`'s start, ahead
of the first upload) and forks children from that warm state; every server process of the host
(the workers of `serve`, or apps sharing a data folder) asks it through a Unix socket in the
data folder. The probe process never loads an upload itself, answers only its own user
(SO_PEERCRED), and counts the host's probes, so its bounds hold whatever the number of workers.

This module is imported by the CLI and every worker: it imports no model library at module
level; `main` (the probe process) imports them.

Protocol: one JSON line from the client per connection, one JSON line back.

- `{"op": "probe", "path", "format", "memory_limit_bytes", "timeout_seconds", "owner",
  "max_concurrent", "max_per_owner", "cost_limits"}` (the ONNX cost budgets, optional) → `{"outcome": "done", "report": <the child's JSON, or
  null when it timed out>, "exitcode": <int or null>}` or `{"outcome": "busy", "scope": "host" |
  "owner"}`. The client closing the connection early kills the child.
- `{"op": "lease"}` → no answer; the connection stays open, and the probe process exits once no
  lease is held and no probe runs (the last server process of the host has gone).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.abc
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

# A child's report is a few KiB; a bigger answer is refused unread.
MAX_REPORT_BYTES: Final = 4 * 1024**2
MAX_REQUEST_BYTES: Final = 64 * 1024
# Unix socket paths are limited to 108 bytes (sun_path); past this, a short path in /tmp.
MAX_SOCKET_PATH: Final = 100
SOCKET_NAME: Final = "probe.sock"
LOCK_NAME: Final = "probe.lock"
# How long a newly started probe process gets to bind its socket (interpreter start, no imports).
BIND_TIMEOUT_SECONDS: Final = 15.0
# A probe process nobody leased exits after this long (its starter died before leasing it).
UNLEASED_GRACE_SECONDS: Final = 30.0
# What the probe process inherits of the environment: the interpreter's and the native thread
# pools' settings, never the server's secrets (MODELYARD_*, database or cloud credentials).
INHERITED_VARIABLES: Final = frozenset({"PATH", "VIRTUAL_ENV", "HOME", "LANG", "TMPDIR", "TZ"})
INHERITED_PREFIXES: Final = ("PYTHON", "LC_", "OMP_", "OPENBLAS_", "MKL_", "VECLIB_", "NUMEXPR_")

# Imported once by the probe process, so each child starts warm (tens of ms, not seconds).
# The first module pins native thread pools to one thread before numpy and friends load.
# scikit-learn and skops take ~1.5 s and most of the memory; ONNX Runtime, XGBoost and
# LightGBM import in ~50 ms each once numpy is loaded, so a child imports them when an upload
# needs them and the process stays ~50 MiB smaller.
PRELOAD: Final = (
    "modelyard.serving.single_thread",
    "numpy",
    "scipy.sparse",
    "sklearn",
    "skops.io",
    "joblib",
    "modelyard.serving.sandbox",
)


def socket_path(data_dir: Path, configured: Path | None = None) -> Path:
    """Return where the probe process of the host using `data_dir` listens."""
    if configured is not None:
        return configured.resolve()
    path = data_dir.resolve() / SOCKET_NAME
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    # A deep data folder: a short path of our own, named after the folder.
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:20]
    folder = Path(tempfile.gettempdir()) / f"modelyard-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{digest}.sock"


class ProbeHostUnavailable(RuntimeError):
    """The host's probe process could not be reached or started."""


def connect(path: Path) -> socket.socket:
    """Connect to the probe process listening at `path` (blocking).

    Raises:
        OSError: nothing listens there (ENOENT, ECONNREFUSED).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.fspath(path))
    except OSError:
        sock.close()
        raise
    return sock


def ensure_running(path: Path) -> subprocess.Popen[bytes] | None:
    """Start the host's probe process at `path` unless one listens there (blocking, ~0.1 s).

    Several processes may call this at once: a lock file beside the socket lets one start it.
    Returns the process if this call started it (the caller reaps it), else None.

    Raises:
        ProbeHostUnavailable: the probe process did not start.
    """
    with contextlib.suppress(OSError), connect(path):
        return None
    with (path.parent / LOCK_NAME).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError), connect(path):
            return None  # another process started it while we waited for the lock
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a probe process that died
        env = {
            k: v
            for k, v in os.environ.items()
            if k in INHERITED_VARIABLES or k.startswith(INHERITED_PREFIXES)
        }
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "modelyard.serving.probehost", os.fspath(path)],
            env=env,
            stdin=subprocess.DEVNULL,
            close_fds=True,
        )
        deadline = time.monotonic() + BIND_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ProbeHostUnavailable(f"the probe process exited with {process.returncode}")
            with contextlib.suppress(OSError), connect(path):
                return process
            time.sleep(0.01)
        process.kill()
        process.wait()
        raise ProbeHostUnavailable(
            f"the probe process did not listen within {BIND_TIMEOUT_SECONDS:g} s"
        )


def lease(path: Path) -> tuple[socket.socket, int]:
    """Hold the probe process at `path` alive while the returned socket is open; and its pid.

    Returns at once, even while the probe process still imports its libraries: it takes the
    lease when it gets to it, and never answers on that connection, so the socket turning
    readable (EOF) means the probe process is gone.

    Raises:
        OSError: the probe process cannot be reached.
    """
    sock = connect(path)
    try:
        sock.sendall(b'{"op": "lease"}\n')
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except BaseException:
        sock.close()
        raise
    pid, _, _ = struct.unpack("3i", creds)
    return sock, pid


# --- the probe process ---------------------------------------------------------------------


@dataclass(eq=False)
class _Child:
    """One forked child probing one upload, and the connection that waits for its answer."""

    pid: int
    pipe: int
    client: socket.socket
    owner: str | None
    deadline: float
    report: bytearray = field(default_factory=bytearray)
    timed_out: bool = False
    too_big: bool = False
    abandoned: bool = False
    exitcode: int | None = None


class ProbeServer:
    """The probe process's event loop: accept, fork a limited child per probe, answer, reap.

    Single-threaded on purpose: children are forked from it, and a fork copies only the
    calling thread (a lock held by another thread would stay held in the child forever).
    """

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, "accept")
        # SIGCHLD wakes the selector: a child's exit is handled at once, without polling.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.requests: dict[socket.socket, bytearray] = {}
        self.leases: set[socket.socket] = set()
        self.children: dict[int, _Child] = {}
        self.by_owner: Counter[str] = Counter()
        self.has_been_leased = False
        self.started = time.monotonic()
        self.stopping = False

    def run(self) -> None:
        """Serve until no lease is held and no probe runs (or SIGTERM)."""
        while not self._done():
            for key, _ in self.selector.select(self._timeout()):
                match key.data:
                    case "accept":
                        self._accept()
                    case "wake":
                        with contextlib.suppress(BlockingIOError):
                            while self._wake_r.recv(4096):
                                pass
                    case "request":
                        self._read_request(key.fileobj)  # type: ignore[arg-type]
                    case "lease":
                        self._read_lease(key.fileobj)  # type: ignore[arg-type]
                    case _Child() as child:
                        if key.fileobj is child.client:
                            self._abandon(child)
                        else:
                            self._read_report(child)
            self._check_children()
        for child in list(self.children.values()):
            self._kill(child)
        while self.children:
            self._check_children(block=True)

    def _done(self) -> bool:
        if self.stopping:
            return True
        if self.leases or self.children or self.requests:
            return False
        return self.has_been_leased or time.monotonic() - self.started > UNLEASED_GRACE_SECONDS

    def _timeout(self) -> float | None:
        if self.stopping:
            return 0
        deadlines = [c.deadline for c in self.children.values() if not c.timed_out]
        if deadlines:
            return max(0.0, min(deadlines) - time.monotonic())
        if not self.has_been_leased and not self.leases:
            return 1.0
        return None

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        # Only the user running the server may ask: the socket's mode says so too, but the
        # folder may be shared.
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            conn.close()
            return
        conn.setblocking(False)
        self.requests[conn] = bytearray()
        self.selector.register(conn, selectors.EVENT_READ, "request")

    def _drop(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        self.requests.pop(conn, None)
        if conn in self.leases:
            self.leases.discard(conn)
        conn.close()

    def _read_request(self, conn: socket.socket) -> None:
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buffer = self.requests[conn]
        buffer += chunk
        if not chunk or len(buffer) > MAX_REQUEST_BYTES:
            self._drop(conn)
            return
        if b"\n" not in buffer:
            return
        self.selector.unregister(conn)
        del self.requests[conn]
        try:
            request = json.loads(buffer)
            op = request["op"]
        except (ValueError, KeyError, TypeError):
            conn.close()
            return
        if op == "lease":
            self.leases.add(conn)
            self.has_been_leased = True
            self.selector.register(conn, selectors.EVENT_READ, "lease")
        elif op == "probe":
            self._start_probe(conn, request)
        else:
            conn.close()

    def _read_lease(self, conn: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            if conn.recv(64):
                return  # a lease sends nothing; ignore whatever it does
        self._drop(conn)

    def _send(self, conn: socket.socket, answer: dict[str, Any]) -> None:
        conn.setblocking(True)
        conn.settimeout(5)
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(answer).encode() + b"\n")

    def _start_probe(self, conn: socket.socket, request: dict[str, Any]) -> None:
        try:
            path = str(request["path"])
            fmt = str(request["format"])
            memory_limit_bytes = int(request["memory_limit_bytes"])
            timeout_seconds = float(request["timeout_seconds"])
            owner = None if request.get("owner") is None else str(request["owner"])
            max_concurrent = int(request["max_concurrent"])
            max_per_owner = int(request["max_per_owner"])
            cost_limits = request.get("cost_limits")
            if cost_limits is not None and not isinstance(cost_limits, dict):
                raise TypeError("cost_limits")
        except (KeyError, TypeError, ValueError):
            conn.close()
            return
        # The host's bounds: however many workers ask, at most this many children exist.
        if owner is not None and self.by_owner[owner] >= max_per_owner:
            self._send(conn, {"outcome": "busy", "scope": "owner"})
            conn.close()
            return
        if len(self.children) >= max_concurrent:
            self._send(conn, {"outcome": "busy", "scope": "host"})
            conn.close()
            return
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _child_main(
                read_end, write_end, path, fmt, memory_limit_bytes, timeout_seconds, cost_limits
            )
        os.close(write_end)  # so the child's exit reads as EOF here
        os.set_blocking(read_end, False)
        child = _Child(
            pid=pid,
            pipe=read_end,
            client=conn,
            owner=owner,
            deadline=time.monotonic() + timeout_seconds,
        )
        self.children[pid] = child
        if owner is not None:
            self.by_owner[owner] += 1
        self.selector.register(read_end, selectors.EVENT_READ, child)
        self.selector.register(conn, selectors.EVENT_READ, child)

    def _read_report(self, child: _Child) -> None:
        try:
            chunk = os.read(child.pipe, 65536)
        except BlockingIOError:
            return
        if chunk and len(child.report) + len(chunk) <= MAX_REPORT_BYTES + 4:
            child.report += chunk
            return
        if chunk:
            child.too_big = True
        # EOF (the child exited or closed it) or too big: nothing more is read.
        self.selector.unregister(child.pipe)
        os.close(child.pipe)
        child.pipe = -1

    def _abandon(self, child: _Child) -> None:
        """The client gave up (cancelled, timed out, exited): nobody waits for this child."""
        child.abandoned = True
        self.selector.unregister(child.client)
        child.client.close()
        self._kill(child)

    def _kill(self, child: _Child) -> None:
        """SIGKILL the child and anything it started in its session (setsid in the sandbox)."""
        if child.exitcode is None:
            # Not reaped yet, so its pid (and group id) cannot have been reused.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)

    def _check_children(self, *, block: bool = False) -> None:
        now = time.monotonic()
        for child in list(self.children.values()):
            if not child.timed_out and now >= child.deadline:
                child.timed_out = True
                self._kill(child)
            # Exited? Peek without reaping (WNOWAIT): its helpers die with its group first.
            options = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
            try:
                exited = os.waitid(os.P_PID, child.pid, options)
            except ChildProcessError:
                exited = None
            if exited is None and not block:
                continue
            self._kill(child)
            _, status = os.waitpid(child.pid, 0)
            child.exitcode = os.waitstatus_to_exitcode(status)
            self._finish(child)

    def _finish(self, child: _Child) -> None:
        del self.children[child.pid]
        if child.owner is not None:
            self.by_owner[child.owner] -= 1
            if not self.by_owner[child.owner]:
                del self.by_owner[child.owner]
        if child.pipe >= 0:
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(child.pipe, 65536):
                    child.report += chunk
                    if len(child.report) > MAX_REPORT_BYTES + 4:
                        child.too_big = True
                        break
            self.selector.unregister(child.pipe)
            os.close(child.pipe)
        if child.abandoned:
            return
        self.selector.unregister(child.client)
        report: str | None = None
        if not child.timed_out:
            report = "" if child.too_big else _unframe(bytes(child.report))
        self._send(child.client, {"outcome": "done", "report": report, "exitcode": child.exitcode})
        child.client.close()


def _unframe(data: bytes) -> str:
    """Return the message multiprocessing's Connection.send_bytes framed; "" if incomplete."""
    if len(data) < 4:
        return ""
    (size,) = struct.unpack("!i", data[:4])
    if size != len(data) - 4:
        return ""
    return data[4:].decode("utf-8", "replace")


def _child_main(
    read_end: int,
    write_end: int,
    path: str,
    fmt: str,
    memory_limit_bytes: int,
    timeout_seconds: float,
    cost_limits: dict[str, Any] | None = None,
) -> None:
    """Run in the forked child: drop the server's descriptors, limit, load, probe, answer."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.close(read_end)
        # The listening socket and other clients' connections are no business of an upload.
        os.closerange(3, write_end)
        os.closerange(write_end + 1, 65536)
        from multiprocessing.connection import Connection

        from modelyard.serving import sandbox
        from modelyard.serving.onnx_cost import CostLimits

        sandbox.run_probe(
            path,
            fmt,
            memory_limit_bytes,
            timeout_seconds,
            Connection(write_end, readable=False),
            None if cost_limits is None else CostLimits.from_json(cost_limits),
        )
        code = 0
    finally:
        os._exit(code)


def _bind(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)  # the socket file is created 0600: only our user connects
    try:
        listener.bind(os.fspath(path))
    finally:
        os.umask(old_mask)
    listener.listen(128)
    listener.setblocking(False)
    return listener


class WithoutPyarrow(importlib.abc.MetaPathFinder):
    """Makes `import pyarrow` fail as if it were not installed.

    pandas (which XGBoost imports) imports pyarrow whenever it is installed (Modelyard reads
    Parquet files elsewhere): ~160 MiB of address space a probe never uses, counted against its
    memory bound. Not installed is what pandas and scikit-learn expect; a `None` in
    `sys.modules` would break scikit-learn's checks for pyarrow data.
    """

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


class WithoutArrayBackends(importlib.abc.MetaPathFinder):
    """Keeps scikit-learn's array-API shims for torch, CuPy, JAX and Dask from being imported.

    skops lists its trusted types with scikit-learn's `all_estimators()`, which walks and imports
    every scikit-learn package, `sklearn.externals.array_api_compat.torch` included: that one
    imports torch whenever torch is installed (~1 GiB of address space, seconds). Served models
    never use these shims; the walk skips a module that fails to import.
    """

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name.startswith(ARRAY_BACKEND_SHIMS):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


ARRAY_BACKEND_SHIMS: Final = tuple(
    f"sklearn.externals.array_api_compat.{backend}" for backend in ("torch", "cupy", "jax", "dask")
)


def keep_array_backends_out() -> None:
    """Register `WithoutArrayBackends` in this process (once); before skops is imported."""
    if not any(isinstance(finder, WithoutArrayBackends) for finder in sys.meta_path):
        sys.meta_path.insert(0, WithoutArrayBackends())


def main(argv: list[str]) -> int:
    """Run the host's probe process listening at argv[0]."""
    path = Path(argv[0])
    # Bound first, imports after: clients connect at once and wait in the backlog while the
    # libraries load, so the first upload waits for the imports only if it comes that early.
    listener = _bind(path)
    identity = os.stat(path).st_ino
    # Ctrl-C in a terminal reaches the whole process group: the workers shut down and drop
    # their leases, which ends this process after uploads in flight have been answered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = ProbeServer(listener)

    def stop(*_: Any) -> None:
        server.stopping = True

    signal.signal(signal.SIGTERM, stop)
    import gc
    import importlib

    sys.meta_path.insert(0, WithoutPyarrow())
    keep_array_backends_out()
    for name in PRELOAD:
        importlib.import_module(name)
    # Everything imported lives as long as the process (and each child): no collection walks it.
    gc.freeze()
    try:
        server.run()
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == identity:  # not a successor's socket
                path.unlink()
        listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
