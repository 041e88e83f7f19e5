"""`modelyard serve --workers 2` as a user starts it, for tests of metrics across workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import modelyard
from modelyard.observability import metrics
from tests.test_cli import CHEAP_ARGON2, SERVER_START_TIMEOUT_SECONDS, SERVER_STOP_TIMEOUT_SECONDS

SRC = str(Path(modelyard.__file__).resolve().parents[1])
# Bounds the waits below: they poll for a state, never assert a duration.
WAIT_SECONDS = 30


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    metrics_dir: Path  # the folder `serve` made for its workers' metrics
    log_path: Path

    def wait_for(self, condition: str, check: Callable[[], bool]) -> None:
        """Poll `check` until it holds; fail with the server's log if it does not in time."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not check():
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{condition}: not in time\n{self.log()}")
            time.sleep(0.1)  # polling interval, not an assertion

    def log(self) -> str:
        return self.log_path.read_text()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def serve_workers(tmp_path: Path, **settings: str) -> Iterator[Server]:
    """Run `modelyard serve --workers 2` with these MODELYARD_* settings until both workers
    are up; stop it with SIGTERM on exit (its whole session if that does not end it)."""
    port = _free_port()
    log_path = tmp_path / "server.log"
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {
        **os.environ,
        **CHEAP_ARGON2,
        "MODELYARD_DATA_DIR": str(tmp_path / "data"),
        "TMPDIR": str(temp),  # where `serve` makes the workers' metrics folder
        # This checkout's code, whatever the interpreter has installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
        **{f"MODELYARD_{name.upper()}": value for name, value in settings.items()},
    }
    env.pop(metrics.MULTIPROC_DIR_ENV, None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
            [sys.executable, "-m", "modelyard", "serve", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so that its workers can be killed if it does not stop
        )
    base_url = f"http://127.0.0.1:{port}"
    server = Server(base_url, process, temp, log_path)

    def is_live() -> bool:
        try:
            return httpx.get(f"{base_url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        while not is_live():
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{server.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer /health in time:\n{server.log()}")
            time.sleep(0.1)  # polling interval, not an assertion
        (server.metrics_dir,) = temp.glob("modelyard-metrics-*")
        server.wait_for("both workers started", lambda: len(worker_pids(server)) == 2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=SERVER_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def worker_pids(server: Server) -> set[int]:
    """The pids of the live workers: each holds a live gauge file while it runs."""
    return {
        int(path.stem.rpartition("_")[2]) for path in server.metrics_dir.glob("gauge_livesum_*.db")
    }


def scrape(server: Server, token: str) -> str:
    """One scrape of /metrics, on a new connection: whichever worker accepts it answers."""
    response = httpx.get(
        f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.text
