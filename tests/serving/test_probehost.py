"""The host's probe process: shared by the apps of one data folder, bounded host-wide, absent in
a `serving` process; and frameworks imported only where they are used."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from modelyard.app import create_app
from modelyard.errors import RateLimited, ServiceUnavailable
from modelyard.serving import probehost
from modelyard.serving.formats import ModelFormat
from modelyard.serving.probe import ModelProber, NoProber, UploadsNotServed
from modelyard.state import AppState
from tests.serving import legit
from tests.support.factories import lifespan
from tests.support.polling import wait_until_blocking
from tests.support.settings import make_settings

MEMORY_BYTES = 512 * 1024**2


def probe_processes(socket_path: Path) -> list[int]:
    """Pids of the probe processes listening at `socket_path` (by their command lines)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"modelyard.serving.probehost" in argv and os.fsencode(socket_path) in argv:
            found.append(int(entry.name))
    return found


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def prober_at(socket_path: Path, *, max_concurrent: int = 4, per_owner: int = 2) -> ModelProber:
    return ModelProber(
        timeout_seconds=30,
        memory_limit_bytes=MEMORY_BYTES,
        allow_pickle=True,
        max_concurrent=max_concurrent,
        max_concurrent_per_owner=per_owner,
        socket_path=socket_path,
    )


async def test_two_apps_on_one_data_folder_share_one_probe_process(
    tmp_path: Path, sqlite_url: str
) -> None:
    first, second = (
        create_app(make_settings(tmp_path, sqlite_url, probe_socket=None)) for _ in range(2)
    )
    async with lifespan(first), lifespan(second):
        states: list[AppState] = [first.state.modelyard, second.state.modelyard]
        for state in states:
            await asyncio.to_thread(state.prober.start)
        socket_path = probehost.socket_path(tmp_path / "data")
        assert socket_path.parent == (tmp_path / "data").resolve()
        [pid] = probe_processes(socket_path)
        assert [getattr(s.prober, "host_pid", None) for s in states] == [pid, pid]


async def test_serving_role_starts_no_probe_process(
    tmp_path: Path, sqlite_url: str, legit_files: dict[str, Path]
) -> None:
    app = create_app(make_settings(tmp_path, sqlite_url, role="serving", probe_socket=None))
    async with lifespan(app):
        state: AppState = app.state.modelyard
        assert isinstance(state.prober, NoProber)
        with pytest.raises(UploadsNotServed) as info:
            await state.prober.probe(legit_files["lr_skops"], ModelFormat.SKOPS)
        assert info.value.status == 404
        assert probe_processes(probehost.socket_path(tmp_path / "data")) == []
        assert not probehost.socket_path(tmp_path / "data").exists()


async def test_probe_process_exits_after_its_last_lease(tmp_path: Path) -> None:
    prober = prober_at(tmp_path / "probe.sock")
    prober.start()
    pid = prober.host_pid
    assert pid is not None
    assert is_running(pid)
    await prober.aclose()
    wait_until_blocking(lambda: not is_running(pid), "the probe host exits")
    assert not (tmp_path / "probe.sock").exists()


async def test_probe_process_killed_is_started_again(
    tmp_path: Path, legit_files: dict[str, Path]
) -> None:
    prober = prober_at(tmp_path / "probe.sock")
    prober.start()
    first = prober.host_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_until_blocking(lambda: not is_running(first), "the first probe host exits")
    report = await prober.probe(legit_files["lr_skops"], ModelFormat.SKOPS)
    assert report.classes == legit.IRIS_CLASSES
    assert prober.host_pid not in {None, first}
    await prober.aclose()


def hold_in_a_fifo(tmp_path: Path) -> tuple[Path, Callable[[bytes], None]]:
    """A model "file" whose reader (the probe's child) blocks until release(data) is called."""
    fifo = tmp_path / "held.json"
    os.mkfifo(fifo)

    def release(data: bytes) -> None:
        def write() -> None:
            with fifo.open("wb") as out:
                out.write(data)

        threading.Thread(target=write, daemon=True).start()

    return fifo, release


async def test_probe_bounds_count_the_host_not_the_process(
    tmp_path: Path, legit_files: dict[str, Path]
) -> None:
    # Two workers of one host: each may run one probe, one per user, but the host runs one.
    socket_path = tmp_path / "probe.sock"
    worker_a = prober_at(socket_path, max_concurrent=1, per_owner=1)
    worker_b = prober_at(socket_path, max_concurrent=1, per_owner=1)
    fifo, release = hold_in_a_fifo(tmp_path)
    held = asyncio.create_task(worker_a.probe(fifo, ModelFormat.XGBOOST_JSON, owner="alice"))
    await asyncio.to_thread(worker_a.start)
    host = worker_a.host_pid
    assert host is not None
    await asyncio.to_thread(wait_until_blocking, lambda: len(children_of(host)) == 1)

    with pytest.raises(RateLimited):
        await worker_b.probe(legit_files["onnx_regressor"], ModelFormat.ONNX, owner="alice")
    with pytest.raises(ServiceUnavailable):
        await worker_b.probe(legit_files["onnx_regressor"], ModelFormat.ONNX, owner="bob")

    release(legit_files["xgb_classifier_json"].read_bytes())
    assert (await held).framework.value == "xgboost"
    assert (await worker_b.probe(legit_files["onnx_regressor"], ModelFormat.ONNX)).n_features == 5
    await worker_a.aclose()
    await worker_b.aclose()


async def test_abandoned_probe_leaves_no_child_behind(tmp_path: Path) -> None:
    prober = prober_at(tmp_path / "probe.sock")
    fifo, _ = hold_in_a_fifo(tmp_path)
    task = asyncio.create_task(prober.probe(fifo, ModelFormat.XGBOOST_JSON))
    await asyncio.to_thread(prober.start)
    host = prober.host_pid
    assert host is not None
    await asyncio.to_thread(wait_until_blocking, lambda: len(children_of(host)) == 1)

    task.cancel()  # the upload's request went away
    with pytest.raises(asyncio.CancelledError):
        await task

    await asyncio.to_thread(wait_until_blocking, lambda: children_of(host) == [])
    await prober.aclose()


def run_python(script: str, tmp_path: Path) -> str:
    """Run `script` in a fresh interpreter (this one has imported everything already)."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


FRAMEWORKS = ("sklearn", "skops", "onnx", "onnxruntime", "xgboost", "lightgbm")


def test_a_framework_is_imported_only_when_a_model_of_it_loads(
    tmp_path: Path, legit_files: dict[str, Path]
) -> None:
    out = run_python(
        f"""
        import hashlib, sys
        from pathlib import Path
        import modelyard.app, modelyard.cli, modelyard.serving.probe
        from modelyard.serving.formats import ModelFormat
        from modelyard.serving.runtimes import load_runtime
        def loaded():
            return sorted({{m.split(".")[0] for m in sys.modules}} & set({FRAMEWORKS!r}))
        print("start", loaded())
        data = Path({str(legit_files["onnx_regressor"])!r}).read_bytes()
        load_runtime(data, ModelFormat.ONNX, sha256=hashlib.sha256(data).hexdigest())
        print("onnx", loaded())
        data = Path({str(legit_files["xgb_classifier_json"])!r}).read_bytes()
        load_runtime(data, ModelFormat.XGBOOST_JSON, sha256=hashlib.sha256(data).hexdigest())
        print("xgboost", loaded())
        """,
        tmp_path,
    )
    start, onnx, xgboost = out.splitlines()
    assert start == "start []"
    assert onnx == "onnx ['onnx', 'onnxruntime']"
    # XGBoost imports scikit-learn itself (for its estimator API), never skops or LightGBM.
    assert xgboost.startswith("xgboost ['onnx', 'onnxruntime'")
    assert "'xgboost'" in xgboost
    assert "lightgbm" not in xgboost
    assert "skops" not in xgboost


def test_a_process_warms_only_the_frameworks_its_registry_uses(
    tmp_path: Path, sqlite_url: str
) -> None:
    # An empty registry: scikit-learn (and skops) only. The lifespan's start-up awaits the
    # warm-up (app.py), so once it has ended nothing more is imported until a model is loaded.
    out = run_python(
        f"""
        import asyncio, sys
        from asgi_lifespan import LifespanManager
        from modelyard.app import create_app
        from modelyard.config import Settings
        settings = Settings(
            _env_file=None, data_dir={str(tmp_path / "data")!r}, database_url={sqlite_url!r},
            role="serving", log_level="WARNING",
        )
        async def main():
            app = create_app(settings)
            async with LifespanManager(app, startup_timeout=120):
                print(sorted({{m.split(".")[0] for m in sys.modules}} & set({FRAMEWORKS!r})))
        asyncio.run(main())
        """,
        tmp_path,
    )
    assert out.splitlines()[-1] == "['sklearn', 'skops']"
