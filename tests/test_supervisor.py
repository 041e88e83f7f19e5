"""`modelyard serve --workers 2`: the workers are forked from a supervisor that imported the
serving stack, and share its pages; a killed worker and SIGHUP bring forked replacements.
Every wait is bounded; nothing asserts on time."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelyard.cli import supervisor
from tests.observability.workers import Server, serve_workers

# What a worker shares with the supervisor without writing it: the interpreter's heap of the
# imported stack. A spawned worker shares no anonymous page (a few MiB of library data at most).
MIN_SHARED_MIB = 40
# Extension modules the supervisor must have imported before the first fork.
PRELOADED = ("numpy/_core/_multiarray_umath", "scipy/", "sklearn/", "pydantic_core/", "sqlalchemy/")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serve_workers(tmp_path) as server:
        yield server


def workers(server: Server) -> set[int]:
    """The supervisor's live children that serve (not the upload probe process it started)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == server.process.pid and state != "Z" and b"probehost" not in cmdline:
            found.add(int(entry.name))
    return found


def shared_mib(pid: int) -> float:
    """Anonymous and file pages `pid` shares with another process and has not copied, in MiB."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    kib = sum(int(line.split()[1]) for line in rollup if line.startswith("Shared_Dirty:"))
    return kib / 1024


def blocked_signals(pid: int) -> int:
    """The signal mask of `pid`'s main thread."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    (mask,) = (line.split()[1] for line in status if line.startswith("SigBlk:"))
    return int(mask, 16)


def mapped_files(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def answers(server: Server) -> bool:
    # A new connection each time: whichever worker accepts it answers.
    return httpx.get(f"{server.url}/health/ready", timeout=10).status_code == 200


def assert_forked_from_supervisor(server: Server, pids: set[int]) -> None:
    supervisor_maps = mapped_files(server.process.pid)
    for library in PRELOADED:
        assert library in supervisor_maps, f"the supervisor has not imported {library}"
    for pid in pids:
        # The heap the supervisor filled while importing is the worker's too, not copied.
        assert shared_mib(pid) >= MIN_SHARED_MIB, (pid, shared_mib(pid))
        # Forked with signals blocked (see supervisor._ForkedWorker), and unblocked since.
        assert blocked_signals(pid) == 0, (pid, blocked_signals(pid))


def test_workers_are_forked_from_a_supervisor_that_imported_the_stack(server: Server) -> None:
    pids = workers(server)

    assert len(pids) == 2
    assert_forked_from_supervisor(server, pids)
    assert all(answers(server) for _ in range(4))


def test_a_killed_worker_is_replaced_by_a_forked_one(server: Server) -> None:
    before = workers(server)
    victim = min(before)

    os.kill(victim, signal.SIGKILL)
    server.wait_for("a new worker replaced the killed one", lambda: victim not in workers(server))
    server.wait_for("two workers run again", lambda: len(workers(server)) == 2)

    after = workers(server)
    assert after - before, (before, after)
    assert_forked_from_supervisor(server, after)
    assert all(answers(server) for _ in range(4))


def test_sighup_replaces_every_worker_with_a_forked_one(server: Server) -> None:
    before = workers(server)

    server.process.send_signal(signal.SIGHUP)
    server.wait_for(
        "both workers replaced",
        lambda: not (workers(server) & before) and len(workers(server)) == 2,
    )

    assert_forked_from_supervisor(server, workers(server))
    assert all(answers(server) for _ in range(4))
    assert server.stop() == 0, server.log()


def test_the_supervisor_refuses_to_fork_while_a_thread_runs() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="threads"), supervisor.forked_workers():
            pass
    finally:
        stop.set()
        thread.join()
