"""`modelyard serve --workers 2` as a user starts it, for tests of metrics across workers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from modelyard.observability import metrics
from tests.support.servers import ServerProcess, environment, running


@dataclass
class Server(ServerProcess):
    # In a session of its own: its workers are killed with it if it does not stop.
    start_new_session: bool = True
    metrics_dir: Path = field(init=False)  # the folder `serve` made for its workers' metrics


@contextmanager
def serve_workers(tmp_path: Path, **settings: str) -> Iterator[Server]:
    """Run `modelyard serve --workers 2` with these MODELYARD_* settings until both workers
    are up; stop it with SIGTERM on exit (its whole session if that does not end it)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    # TMPDIR: where `serve` makes the workers' metrics folder.
    env = {**environment(tmp_path, **settings), "TMPDIR": str(temp)}
    env.pop(metrics.MULTIPROC_DIR_ENV, None)
    with running(Server(tmp_path, ("--workers", "2"), env)) as server:
        (server.metrics_dir,) = temp.glob("modelyard-metrics-*")
        server.wait_for("both workers started", lambda: len(worker_pids(server)) == 2)
        yield server


def worker_pids(server: Server) -> set[int]:
    """The pids of the live workers: each holds a live gauge file while it runs."""
    return {
        int(path.stem.rpartition("_")[2]) for path in server.metrics_dir.glob("gauge_livesum_*.db")
    }


def scrape(server: Server, token: str) -> str:
    """One scrape of /metrics, on a new connection: whichever worker accepts it answers."""
    response = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.text
