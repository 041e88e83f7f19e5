"""Real `modelyard serve` processes for end-to-end tests: started on a free port with this
checkout's code, waited for with a bound, stopped with SIGTERM (or killed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import modelyard

SRC = str(Path(modelyard.__file__).resolve().parents[1])
# Cheap password hashing: servers in tests log in far more often than people do.
CHEAP_ARGON2 = {
    "MODELYARD_ARGON2_MEMORY_KIB": "8",
    "MODELYARD_ARGON2_TIME_COST": "1",
    "MODELYARD_ARGON2_PARALLELISM": "1",
}
START_TIMEOUT_SECONDS = 60  # a bound: a server that needs it has failed
STOP_TIMEOUT_SECONDS = 30


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        """SIGTERM (in-flight requests finish, the prediction log is flushed); return the code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_SECONDS)


@contextmanager
def running_server(folder: Path, *args: str, **settings: str) -> Iterator[ServerProcess]:
    """Run `modelyard serve ARGS` in `folder` with these MODELYARD_* settings (names in lower
    case, without the prefix) until the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = folder / "server.log"
    env = {
        **os.environ,
        **CHEAP_ARGON2,
        "MODELYARD_DATA_DIR": str(folder / "data"),
        # This checkout's code, whatever the interpreter has installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
        **{f"MODELYARD_{name.upper()}": value for name, value in settings.items()},
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
            [sys.executable, "-m", "modelyard", "serve", "--port", str(port), *args],
            env=env,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(process, port, log_path)
    try:
        wait_until_live(server)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_until_live(server: ServerProcess) -> None:
    """Poll /health until the server answers; fail if it dies or never answers."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if server.process.poll() is not None:
            pytest.fail(
                f"server exited with {server.process.returncode}:\n{server.log_path.read_text()}"
            )
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"server did not answer /health in time:\n{server.log_path.read_text()}")
        time.sleep(0.1)  # polling interval, not an assertion
