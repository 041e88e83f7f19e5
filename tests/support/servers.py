"""Real `modelyard serve` processes for end-to-end tests: started on a free port with this
checkout's code, waited for with a bound, stopped with SIGTERM (or killed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

import modelyard
from tests.support.polling import wait_until_blocking

SRC = str(Path(modelyard.__file__).resolve().parents[1])
# Cheap password hashing: servers in tests log in far more often than people do.
CHEAP_ARGON2 = {
    "MODELYARD_ARGON2_MEMORY_KIB": "8",
    "MODELYARD_ARGON2_TIME_COST": "1",
    "MODELYARD_ARGON2_PARALLELISM": "1",
}
# Bounds: a wait that reaches one has failed. Every wait polls for a state, none asserts a time.
# A start-up imports the ML stack and starts a probe process: over a minute on a loaded machine.
START_TIMEOUT_SECONDS = 180
STOP_TIMEOUT_SECONDS = 30
WAIT_SECONDS = 30


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def environment(folder: Path, **settings: str) -> dict[str, str]:
    """The environment of a server in `folder` with these MODELYARD_* settings (names in lower
    case, without the prefix): its data in `folder`/data, this checkout's code."""
    return {
        **os.environ,
        **CHEAP_ARGON2,
        "MODELYARD_DATA_DIR": str(folder / "data"),
        # This checkout's code, whatever the interpreter has installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
        # JSON lines, which tests read (in development the default is text for people).
        "MODELYARD_LOG_FORMAT": "json",
        **{f"MODELYARD_{name.upper()}": value for name, value in settings.items()},
    }


@dataclass
class ServerProcess:
    """`modelyard serve ARGS` run in `folder` with `env`, its output in `folder`/server.log."""

    folder: Path
    args: tuple[str, ...]
    env: dict[str, str]
    # In a session of its own, its workers can be killed with it if it does not stop.
    start_new_session: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] = field(init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    def log(self) -> str:
        return self.log_path.read_text()

    def launch(self) -> None:
        """Start the process (again, once stopped: same port, data folder and log)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
                [sys.executable, "-m", "modelyard", "serve", "--port", str(self.port), *self.args],
                env=self.env,
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.start_new_session,
            )

    def start(self) -> None:
        """Launch the server and wait until it answers."""
        self.launch()
        wait_until_live(self)

    def stop(self) -> int:
        """SIGTERM (in-flight requests finish, the prediction log is flushed); return the code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def close(self) -> None:
        """End the process if it still runs: killed; in a session of its own, stopped, and
        its whole session killed if it does not stop in time."""
        if self.process.poll() is not None:
            return
        if not self.start_new_session:
            self.process.kill()
            self.process.wait()
            return
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def wait_for(
        self, condition: str, check: Callable[[], bool], timeout: float = WAIT_SECONDS
    ) -> None:
        """Poll `check` until it holds; fail with the server's log if the server exits first
        or `check` does not hold within `timeout` seconds."""

        def exited() -> str | None:
            code = self.process.poll()
            return None if code is None else f"server exited with {code}:\n{self.log()}"

        wait_until_blocking(
            check, lambda: f"{condition}\n{self.log()}", seconds=timeout, interval=0.1, stop=exited
        )


ServerT = TypeVar("ServerT", bound=ServerProcess)


@contextmanager
def running(server: ServerT) -> Iterator[ServerT]:
    """Start `server`, wait until it answers, and end it (`close`) when the block ends."""
    server.launch()
    try:
        wait_until_live(server)
        yield server
    finally:
        server.close()


@contextmanager
def running_server(folder: Path, *args: str, **settings: str) -> Iterator[ServerProcess]:
    """Run `modelyard serve ARGS` in `folder` with these MODELYARD_* settings (names in lower
    case, without the prefix) until the block ends."""
    with running(ServerProcess(folder, args, environment(folder, **settings))) as server:
        yield server


def wait_until_live(server: ServerProcess) -> None:
    """Poll /health until the server answers; fail if it dies or never answers."""

    def answers() -> bool:
        try:
            return httpx.get(f"{server.url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    server.wait_for("the server answers /health", answers, timeout=START_TIMEOUT_SECONDS)
