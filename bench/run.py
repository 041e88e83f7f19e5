"""`make bench`: Modelyard against a bare ASGI floor and MLServer, under the same wrk load.

Each system runs alone (started, warmed up, measured, stopped) so none shares the two cores
with another. See bench/README.md for what is measured and how to read the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import models as bench_models  # noqa: E402 - bench/ is not a package

VENV_BIN = Path(sys.executable).parent
MLSERVER_BIN = BENCH / ".venv-mlserver" / "bin"
RESULTS = BENCH / "results"
LUA = BENCH / "wrk" / "post.lua"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
WARMUP_REQUESTS = 40
WARM_UPLOADS = 10  # uploads of the logistic regression timed after the first (p50)
# The targets of issue #12 (a lean process), checked in the report.
TARGET_TWO_WORKERS_MIB = 600.0
TARGET_SERVING_VS_MLSERVER = 1.3
TARGET_WARM_UPLOAD_MS = 300.0
TARGET_FIRST_UPLOAD_MS = 1000.0
TARGET_COLD_START_MS = 100.0
SYSTEMS = ("modelyard", "floor", "mlserver")
MLSERVER_CONFIGS: dict[str, dict[str, Any]] = {
    "mlserver": {},
    "mlserver-batch": {"max_batch_size": 32, "max_batch_time": 0.005},
}


class BenchError(RuntimeError):
    """A step of the bench failed; the message says which."""


@dataclass(frozen=True)
class Cell:
    model: str
    rows: int
    connections: int
    route: str


@dataclass
class Result:
    system: str
    model: str
    rows: int
    connections: int
    route: str
    requests: int
    ok: int
    non_2xx: int
    socket_errors: int
    in_flight: int
    rps: float
    p50_ms: float
    p99_ms: float
    vs_mlserver: float | None = None
    vs_floor: float | None = None


@dataclass
class Report:
    meta: dict[str, Any]
    results: list[Result] = field(default_factory=list)
    cold_start: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    prediction_log: dict[str, Any] = field(default_factory=dict)
    uploads: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)  # noqa: T201 - the bench talks to its user


def csv(kind: type, allowed: tuple[str, ...] | None = None) -> Any:
    def parse(text: str) -> list[Any]:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        if allowed is not None:
            for v in values:
                if v not in allowed:
                    raise argparse.ArgumentTypeError(f"{v!r} is not one of {', '.join(allowed)}")
        return values

    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    p.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per cell (default 20)")
    p.add_argument("--quick", action="store_true", help="3 s per cell: a smoke run")
    p.add_argument("--systems", type=csv(str, SYSTEMS), default=list(SYSTEMS))
    p.add_argument("--models", type=csv(str, bench_models.MODEL_NAMES), default=["lr", "rf"])
    p.add_argument("--rows", type=csv(int), default=[1, 64])
    p.add_argument("--connections", type=csv(int), default=[1, 8, 64])
    p.add_argument("--routes", type=csv(str, ("native", "v2")), default=["native", "v2"])
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument(
        "--traffic-split",
        action="store_true",
        help="then measure Modelyard again with a 90/10 traffic policy between two versions "
        "(system `modelyard-90/10`)",
    )
    p.add_argument(
        "--no-serving-replica",
        dest="serving_replica",
        action="store_false",
        help="skip measuring a MODELYARD_ROLE=serving replica's memory",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.duration = 3.0
    return args


# ---------------------------------------------------------------- processes and measurements


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own command lines
            argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM the server (a clean shutdown flushes logs), SIGKILL its group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            say(f"pid {proc.pid} ignored SIGTERM for {timeout:.0f} s; killing its group")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode}; log:\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise BenchError(f"{url} not ready after {timeout:.0f} s; log:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def rss_by_process(pid: int) -> dict[str, int]:
    """VmRSS in KiB of `pid` and each of its descendants, keyed "pid command" (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: dict[str, int] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{current}/cmdline").read_bytes().split(b"\0")
            command = " ".join(a.decode(errors="replace") for a in argv if a)
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    found[f"{current} {command[:100]}"] = int(line.split()[1])
    return found


def smaps_rollup(pid: int) -> dict[str, int]:
    """PSS and USS in KiB of one process (`/proc/<pid>/smaps_rollup`; zeros once it is gone).

    PSS divides each page among the processes that map it (summed over processes, shared pages
    count once); USS counts the pages only this process maps (what its exit would free).
    """
    found = {"pss": 0, "uss": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == "Pss":
                found["pss"] += int(rest.split()[0])
            elif name in ("Private_Clean", "Private_Dirty"):
                found["uss"] += int(rest.split()[0])
    return found


def pss_tree(pid: int) -> int:
    """Proportional set size in KiB of `pid` and its descendants: shared pages counted once."""
    return sum(smaps_rollup(int(key.split()[0]))["pss"] for key in rss_by_process(pid))


def uss_tree(pid: int) -> int:
    """Unique set size in KiB of `pid` and its descendants: pages no other process maps."""
    return sum(smaps_rollup(int(key.split()[0]))["uss"] for key in rss_by_process(pid))


def rss_tree(pid: int) -> tuple[int, int]:
    """VmRSS of `pid` and all its descendants in KiB, and how many processes that is."""
    found = rss_by_process(pid)
    return sum(found.values()), len(found)


WRK_RESULT = re.compile(r"^BENCH_RESULT (\{.*\})$", re.MULTILINE)


def run_wrk(
    url: str,
    body: Path,
    api_key: str | None,
    connections: int,
    seconds: float,
    header_length: int | None = None,
) -> Any:
    threads = 1 if connections == 1 else 2
    argv = [
        wrk_path(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    env = {
        **os.environ,
        "BENCH_BODY_FILE": str(body),
        "BENCH_API_KEY": api_key or "",
        "BENCH_HEADER_LENGTH": "" if header_length is None else str(header_length),
    }
    done = subprocess.run(  # noqa: S603 - our own command line
        argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    match = WRK_RESULT.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    return json.loads(match.group(1))


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchError("wrk is not installed (make bench installs it with apt-get)")
    return path


# ---------------------------------------------------------------- request bodies


def request_rows(model: str, rows: int) -> np.ndarray[Any, Any]:
    x, _ = bench_models.dataset(model)
    return x[np.arange(rows) * 7 % len(x)]


def native_body(x: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {"inputs": x.tolist()}


def v2_body(x: np.ndarray[Any, Any], *, mlserver: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "input-0",
                "datatype": "FP64",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ]
    }
    if mlserver:  # MLServer answers `predict` only unless asked; Modelyard gives both
        body["outputs"] = [{"name": "predict"}, {"name": "predict_proba"}]
    return body


def route_path(route: str, model: str) -> str:
    if route == "native":
        return f"/api/v1/predict/{model}"
    return f"/v2/models/{model}/infer"


# ---------------------------------------------------------------- one system under load


@dataclass
class Target:
    """A running system: where it listens, how to authenticate, which process to watch."""

    system: str
    base: str
    proc: subprocess.Popen[bytes]
    api_key: str | None = None
    routes: tuple[str, ...] = ("native", "v2")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.bodies = work / "bodies"
        self.bodies.mkdir()
        stamp = datetime.now(UTC)
        self.report = Report(
            meta={
                "started_at": stamp.isoformat(timespec="seconds"),
                "workers": args.workers,
                "database": args.database,
                "duration_s": args.duration,
                "cpus": os.cpu_count(),
                "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
                "wrk": "1 thread at 1 connection, 2 threads otherwise; same machine",
                "modelyard_log_level": "WARNING (no access log)",
                "mlserver_workers": "1 process (parallel_workers: 0 runs inference in-process)",
            }
        )
        self.stamp = stamp.strftime("%Y%m%dT%H%M%SZ")
        self.modelyard_ok = 0  # 2xx answers from Modelyard: wrk's plus the driver's own
        self.modelyard_non_2xx = 0
        self.modelyard_in_flight = 0  # sent by wrk but not answered by its deadline
        self.ready_at = 0.0  # when Modelyard's /health first answered

    # -- cells

    def cells(self, routes: tuple[str, ...]) -> Iterator[Cell]:
        """The requested cells on the routes a system has (MLServer: V2 stands in for both)."""
        wanted = [r for r in self.args.routes if r in routes] or list(routes)
        for model in self.args.models:
            for route in wanted:
                for rows in self.args.rows:
                    for connections in self.args.connections:
                        yield Cell(model, rows, connections, route)

    def body_file(self, system: str, cell: Cell) -> Path:
        x = request_rows(cell.model, cell.rows)
        if cell.route == "native":
            document = native_body(x)
        else:
            document = v2_body(x, mlserver=system.startswith("mlserver"))
        kind = "mlserver" if system.startswith("mlserver") else "default"
        path = self.bodies / f"{kind}-{cell.model}-{cell.rows}-{cell.route}.json"
        if not path.exists():
            path.write_text(json.dumps(document))
        return path

    def warm_up(self, target: Target) -> int:
        """Send each (model, route, rows) body on fresh connections, so every worker loads it."""
        ok = 0
        headers = {"Content-Type": "application/json", "Connection": "close"}
        if target.api_key:
            headers["X-API-Key"] = target.api_key
        seen: set[tuple[str, str, int]] = set()
        for cell in self.cells(target.routes):
            key = (cell.model, cell.route, cell.rows)
            if key in seen:
                continue
            seen.add(key)
            body = self.body_file(target.system, cell).read_bytes()
            url = target.base + route_path(cell.route, cell.model)
            for _ in range(WARMUP_REQUESTS):
                answer = httpx.post(url, content=body, headers=headers, timeout=30)
                if answer.status_code // 100 != 2:
                    raise BenchError(
                        f"{target.system} warm-up {url} answered {answer.status_code}: "
                        f"{answer.text[:300]}"
                    )
                ok += 1
        return ok

    def measure(self, target: Target) -> None:
        for cell in self.cells(target.routes):
            body = self.body_file(target.system, cell)
            url = target.base + route_path(cell.route, cell.model)
            raw = run_wrk(url, body, target.api_key, cell.connections, self.args.duration)
            seconds = raw["duration_us"] / 1e6
            non_2xx = int(raw["errors_status"])
            result = Result(
                system=target.system,
                model=cell.model,
                rows=cell.rows,
                connections=cell.connections,
                route=cell.route,
                requests=int(raw["requests"]),
                ok=int(raw["requests"]) - non_2xx,
                non_2xx=non_2xx,
                socket_errors=sum(
                    int(raw[k])
                    for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout")
                ),
                in_flight=max(0, int(raw["sent"]) - int(raw["requests"])),
                rps=raw["requests"] / seconds if seconds else 0.0,
                p50_ms=raw["p50_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
            )
            self.report.results.append(result)
            if target.system.startswith("modelyard"):
                self.modelyard_ok += result.ok
                self.modelyard_non_2xx += result.non_2xx
                self.modelyard_in_flight += result.in_flight
            flag = f"  NON-2XX {non_2xx}" if non_2xx else ""
            flag += f"  SOCKET ERRORS {result.socket_errors}" if result.socket_errors else ""
            say(
                f"{target.system:<14} {cell.model} rows={cell.rows:<2} c={cell.connections:<2} "
                f"{cell.route:<6} {result.rps:8.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                f"p99 {result.p99_ms:7.2f} ms{flag}"
            )

    # -- systems

    def run_system(self, system: str) -> None:
        log = self.work / f"{system}.log"
        try:
            if system == "modelyard":
                self.run_modelyard(log)
            elif system == "floor":
                self.run_floor(log)
            else:
                for config in MLSERVER_CONFIGS:
                    self.run_mlserver(config, self.work / f"{config}.log")
        except BenchError as exc:
            say(f"{system} FAILED, skipped: {exc}")
            self.report.skipped[system] = str(exc).splitlines()[0]

    def run_modelyard(self, log: Path) -> None:
        data = self.work / "modelyard-data"
        env = {
            **os.environ,
            "MODELYARD_DATA_DIR": str(data),
            "MODELYARD_LOG_LEVEL": "WARNING",
            "MODELYARD_AUTH_RATE_LIMIT_PER_MINUTE": "0",
        }
        env.pop("MODELYARD_DATABASE_URL", None)
        database: str | None = None
        if self.args.database == "postgresql":
            database = f"modelyard_bench_{uuid.uuid4().hex[:12]}"
            pg(f'CREATE DATABASE "{database}"')
            env["MODELYARD_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{database}"
        port = free_port()
        argv = [
            str(VENV_BIN / "modelyard"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(self.args.workers),
        ]
        proc = start(argv, env=env, cwd=self.work, log=log)
        target: Target | None = None
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/health", proc, log)
            self.ready_at = time.perf_counter()
            target = Target("modelyard", base, proc, api_key=self.account(base))
            self.upload_models(target)
            self.time_uploads(target)
            self.modelyard_ok += self.warm_up(target)
            self.measure(target)
            if self.args.traffic_split:
                split = Target("modelyard-90/10", base, proc, api_key=target.api_key)
                self.split_traffic(split)
                self.modelyard_ok += self.warm_up(split)
                self.measure(split)
            self.report.prediction_log["api"] = self.logged_via_api(target)
        finally:
            stop(proc)
            try:
                self.report.prediction_log["table"] = self.logged_in_table(data, database)
                if self.args.serving_replica and target is not None:
                    self.run_serving_replica(env, target, log)
            finally:
                if database is not None:
                    pg(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        self.check_prediction_log()

    def split_traffic(self, target: Target) -> None:
        """Upload each model once more and send 90 % of its requests to the version the cells
        measured before, 10 % to the new one (the cost of a canary, against no policy)."""
        headers = {"X-API-Key": target.api_key or ""}
        files = self.work / "models-skops"
        with httpx.Client(base_url=target.base + "/api/v1", timeout=120, headers=headers) as client:
            for model in self.args.models:
                path = files / f"{model}.skops"
                with path.open("rb") as f:
                    answer = client.post(
                        "/models/upload",
                        files={"file": (path.name, f, "application/octet-stream")},
                        data={"name": model},
                    )
                expect(answer, 201, f"upload {model} again")
                version = answer.json()["version"]
                policy = {
                    "routes": [
                        {"target": f"v{version - 1}", "weight": 90},
                        {"target": f"v{version}", "weight": 10},
                    ]
                }
                expect(client.put(f"/models/{model}/traffic", json=policy), 200, "traffic policy")
                self.modelyard_ok += self.warm_up_model(target, model)
        say("modelyard: 90/10 traffic policies set")

    def time_uploads(self, target: Target) -> None:
        """Upload the logistic regression WARM_UPLOADS more times: p50 of warm uploads."""
        headers = {"X-API-Key": target.api_key or ""}
        path = self.work / "models-skops" / f"{self.args.models[0]}.skops"
        durations = []
        with httpx.Client(base_url=target.base, timeout=120, headers=headers) as client:
            for _ in range(WARM_UPLOADS):
                started = time.perf_counter()
                with path.open("rb") as f:
                    answer = client.post(
                        "/api/v1/models/upload",
                        files={"file": (path.name, f, "application/octet-stream")},
                        data={"name": "bench-uploads"},
                    )
                durations.append((time.perf_counter() - started) * 1000)
                expect(answer, 201, "warm upload")
        first = self.report.cold_start[self.args.models[0]]
        self.report.uploads = {
            "model": self.args.models[0],
            "file_bytes": path.stat().st_size,
            "first_upload_ms": first["upload_ms"],
            "first_upload_after_ready_ms": first["upload_after_ready_ms"],
            "warm_p50_ms": round(float(np.median(durations)), 1),
            "warm_max_ms": round(max(durations), 1),
            "warm_ms": [round(d, 1) for d in durations],
        }
        say(
            f"modelyard uploads of {path.name}: first {first['upload_ms']} ms "
            f"({first['upload_after_ready_ms']} ms after /health answered), "
            f"warm p50 {self.report.uploads['warm_p50_ms']} ms over {WARM_UPLOADS}"
        )

    def run_serving_replica(self, env: dict[str, str], main: Target, log: Path) -> None:
        """A `serving` replica, one worker, on the same data: its memory with the models loaded."""
        port = free_port()
        argv = [str(VENV_BIN / "modelyard"), "serve", "--port", str(port), "--workers", "1"]
        proc = start(argv, env={**env, "MODELYARD_ROLE": "serving"}, cwd=self.work, log=log)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/health", proc, log)
            replica = Target("modelyard-serving", base, proc, api_key=main.api_key)
            for model in self.args.models:
                self.warm_up_model(replica, model)
            time.sleep(0.5)
            per_process = rss_by_process(proc.pid)
            self.report.memory["modelyard-serving"] = {
                "rss_mib": round(sum(per_process.values()) / 1024, 1),
                "pss_mib": round(pss_tree(proc.pid) / 1024, 1),
                "uss_mib": round(uss_tree(proc.pid) / 1024, 1),
                "processes": len(per_process),
                "models": list(self.args.models),
            }
            say(f"modelyard serving replica: {self.report.memory['modelyard-serving']}")
        except BenchError as exc:
            say(f"serving replica FAILED: {exc}")
            self.report.skipped["modelyard-serving"] = str(exc).splitlines()[0]
        finally:
            stop(proc)

    def account(self, base: str) -> str:
        email, password = f"bench-{uuid.uuid4().hex[:8]}@example.com", uuid.uuid4().hex
        with httpx.Client(base_url=base + "/api/v1", timeout=30) as client:
            created = client.post("/auth/register", json={"email": email, "password": password})
            expect(created, 201, "register")
            login = client.post("/auth/login", json={"email": email, "password": password})
            expect(login, 200, "login")
            token = login.json()["access_token"]
            key = client.post(
                "/api-keys",
                json={"name": "bench", "scopes": ["read", "predict", "write"]},
                headers={"Authorization": f"Bearer {token}"}
            )
            expect(key, 201, "create API key")
            return str(key.json()["key"])

    def upload_models(self, target: Target) -> None:
        """Upload each model; time upload → first prediction; RSS before/after each model."""
        headers = {"X-API-Key": target.api_key or ""}
        files = self.work / "models-skops"
        with httpx.Client(base_url=target.base, timeout=120, headers=headers) as client:
            for model in self.args.models:
                rss_before, _ = rss_tree(target.proc.pid)
                path = files / f"{model}.skops"
                started = time.perf_counter()
                with path.open("rb") as f:
                    answer = client.post(
                        "/api/v1/models/upload",
                        files={"file": (path.name, f, "application/octet-stream")},
                        data={"name": model},
                    )
                uploaded = time.perf_counter()
                expect(answer, 201, f"upload {model}")
                version = answer.json()["version"]
                body = native_body(request_rows(model, 1))
                attempts = 0
                while True:
                    attempts += 1
                    first = client.post(
                        f"/api/v1/predict/{model}", params={"version": version}, json=body
                    )
                    if first.status_code == 200:
                        break
                    self.modelyard_non_2xx += 1
                    if time.perf_counter() - uploaded > 60:
                        raise BenchError(f"no prediction from {model} 60 s after its upload")
                    time.sleep(0.01)
                answered = time.perf_counter()
                self.modelyard_ok += 1
                self.report.cold_start[model] = {
                    "upload_ms": round((uploaded - started) * 1000, 1),
                    "upload_after_ready_ms": round((uploaded - self.ready_at) * 1000, 1),
                    "upload_to_first_prediction_ms": round((answered - uploaded) * 1000, 1),
                    "attempts": attempts,
                    "file_bytes": path.stat().st_size,
                }
                # Every worker loads the model on its first request for it.
                self.modelyard_ok += self.warm_up_model(target, model)
                time.sleep(0.5)
                per_process = rss_by_process(target.proc.pid)
                rss_after, processes = sum(per_process.values()), len(per_process)
                self.report.memory[f"modelyard/{model}"] = {
                    "rss_before_mib": round(rss_before / 1024, 1),
                    "rss_after_mib": round(rss_after / 1024, 1),
                    "pss_after_mib": round(pss_tree(target.proc.pid) / 1024, 1),
                    "uss_after_mib": round(uss_tree(target.proc.pid) / 1024, 1),
                    "delta_mib": round((rss_after - rss_before) / 1024, 1),
                    "processes": processes,
                    "after_by_process_mib": {k: round(v / 1024, 1) for k, v in per_process.items()},
                    "after_by_process_pss_uss_mib": {
                        k: [round(v / 1024, 1) for v in smaps_rollup(int(k.split()[0])).values()]
                        for k in per_process
                    },
                }
                say(
                    f"modelyard {model}: upload {self.report.cold_start[model]['upload_ms']} ms, "
                    f"upload→first prediction "
                    f"{self.report.cold_start[model]['upload_to_first_prediction_ms']} ms, "
                    f"RSS +{(rss_after - rss_before) / 1024:.1f} MiB "
                    f"({self.args.workers} workers)"
                )

    def warm_up_model(self, target: Target, model: str) -> int:
        headers = {"X-API-Key": target.api_key or "", "Connection": "close"}
        body = native_body(request_rows(model, 1))
        url = f"{target.base}/api/v1/predict/{model}"
        for _ in range(WARMUP_REQUESTS):
            expect(httpx.post(url, json=body, headers=headers, timeout=30), 200, "warm-up")
        return WARMUP_REQUESTS

    def logged_via_api(self, target: Target) -> dict[str, Any]:
        """Poll `GET /api/v1/predictions` until the totals stop moving (the log is async)."""
        headers = {"X-API-Key": target.api_key or ""}
        last: tuple[int, int] | None = None
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=target.base, headers=headers, timeout=30) as client:
            while True:
                time.sleep(1.5)
                counts = tuple(
                    int(
                        expect(
                            client.get(
                                "/api/v1/predictions", params={"limit": 1, "status": status}
                            ),
                            200,
                            "prediction totals",
                        ).json()["total"]
                    )
                    for status in ("success", "error")
                )
                if counts == last or time.monotonic() > deadline:
                    return {"success": counts[0], "error": counts[1]}
                last = (counts[0], counts[1])

    def logged_in_table(self, data: Path, database: str | None) -> dict[str, Any]:
        """Count the `predictions` rows after the clean shutdown (which flushes the log)."""
        query = "SELECT status, count(*) FROM predictions GROUP BY status"
        if database is None:
            with contextlib.closing(sqlite3.connect(data / "modelyard.db")) as db:
                rows = db.execute(query).fetchall()
        else:
            rows = pg(query, database=database)
        counts = {str(status): int(n) for status, n in rows}
        return {"success": counts.get("success", 0), "error": counts.get("error", 0)}

    def check_prediction_log(self) -> None:
        log = self.report.prediction_log
        log["sent_2xx"] = self.modelyard_ok
        log["sent_non_2xx"] = self.modelyard_non_2xx
        log["wrk_in_flight"] = self.modelyard_in_flight
        problems = []
        for where in ("api", "table"):
            if where not in log:
                continue
            extra = log[where]["success"] - self.modelyard_ok
            log[f"{where}_success_minus_sent"] = extra
            # wrk stops counting at its deadline: the requests then in flight (counted by the
            # Lua script) may or may not have been served and logged; nothing else may differ.
            if not 0 <= extra <= self.modelyard_in_flight:
                problems.append(
                    f"{where}: {log[where]['success']} successes logged, {self.modelyard_ok} "
                    f"answered 2xx (+ {self.modelyard_in_flight} in flight at wrk's deadlines)"
                )
            if log[where]["error"] != self.modelyard_non_2xx:
                problems.append(
                    f"{where}: {log[where]['error']} failures logged, "
                    f"{self.modelyard_non_2xx} non-2xx answers"
                )
        log["ok"] = not problems
        if problems:
            say("!" * 72)
            for problem in problems:
                say(f"PREDICTION LOG MISMATCH: {problem}")
            say("!" * 72)
        else:
            say(
                f"prediction log: {log.get('table', log.get('api'))} for {self.modelyard_ok} "
                f"2xx answers (+ ≤{self.modelyard_in_flight} in flight at wrk's deadlines): "
                "consistent"
            )

    def run_floor(self, log: Path) -> None:
        port = free_port()
        env = {**os.environ, "BENCH_FLOOR_MODELS": str(self.work / "models-skops")}
        argv = [
            str(VENV_BIN / "uvicorn"),
            "floor:app",
            "--app-dir",
            str(BENCH),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(self.args.workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        proc = start(argv, env=env, cwd=self.work, log=log)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/health", proc, log)
            target = Target("floor", base, proc)
            self.warm_up(target)
            self.report.memory["floor"] = memory_after(proc)
            self.measure(target)
        finally:
            stop(proc)

    def run_mlserver(self, config: str, log: Path) -> None:
        if not (MLSERVER_BIN / "mlserver").exists():
            raise BenchError(f"{MLSERVER_BIN / 'mlserver'} missing (make bench creates it)")
        repo = self.work / config
        joblib_dir = self.work / "models-joblib"
        if not joblib_dir.exists():
            built = subprocess.run(  # noqa: S603 - our own command line
                [str(MLSERVER_BIN / "python"), str(BENCH / "models.py"), str(joblib_dir), "joblib"],
                capture_output=True,
                text=True,
                check=False,
            )
            if built.returncode != 0:
                raise BenchError(f"building joblib models failed: {built.stderr[-500:]}")
        port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        settings = json.loads((BENCH / "mlserver" / "settings.json").read_text())
        settings.update(http_port=port, grpc_port=grpc_port, metrics_port=metrics_port)
        repo.mkdir()
        (repo / "settings.json").write_text(json.dumps(settings, indent=2))
        for model in self.args.models:
            folder = repo / model
            folder.mkdir()
            shutil.copy(joblib_dir / f"{model}.joblib", folder / "model.joblib")
            model_settings = json.loads((BENCH / "mlserver" / "model-settings.json").read_text())
            model_settings.update(name=model, **MLSERVER_CONFIGS[config])
            (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
        env = {**os.environ, "PATH": f"{MLSERVER_BIN}:{os.environ.get('PATH', '')}"}
        proc = start(
            [str(MLSERVER_BIN / "mlserver"), "start", str(repo)], env=env, cwd=repo, log=log
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/v2/health/ready", proc, log, timeout=120)
            for model in self.args.models:
                wait_http(f"{base}/v2/models/{model}/ready", proc, log)
            target = Target(config, base, proc, routes=("v2",))
            self.warm_up(target)
            self.report.memory[config] = memory_after(proc)
            self.measure(target)
        finally:
            stop(proc)

    # -- report

    def compare(self) -> None:
        best_mlserver: dict[tuple[str, int, int], float] = {}
        floor: dict[tuple[str, int, int, str], float] = {}
        for r in self.report.results:
            if r.system.startswith("mlserver"):
                key = (r.model, r.rows, r.connections)
                best_mlserver[key] = max(best_mlserver.get(key, 0.0), r.rps)
            elif r.system == "floor":
                floor[(r.model, r.rows, r.connections, r.route)] = r.rps
        for r in self.report.results:
            ml = best_mlserver.get((r.model, r.rows, r.connections))
            fl = floor.get((r.model, r.rows, r.connections, r.route))
            r.vs_mlserver = round(r.rps / ml, 2) if ml else None
            r.vs_floor = round(r.rps / fl, 2) if fl else None

    def check_targets(self) -> None:
        """Set the lean-process targets (#12) beside what this run measured."""
        memory, uploads = self.report.memory, self.report.uploads
        first_model = self.args.models[0]
        rows: list[tuple[str, str, float | None, float, str]] = []
        two = memory.get(f"modelyard/{first_model}")
        if two and self.args.workers == 2:
            rows.append(
                (
                    f"`serve --workers 2` with one {first_model} model, total RSS",
                    "MiB",
                    two["rss_after_mib"],
                    TARGET_TWO_WORKERS_MIB,
                    "≤",
                )
            )
            # RSS counts a page shared by the workers once per process; PSS once in all.
            rows.append(
                (
                    f"`serve --workers 2` with one {first_model} model, total PSS",
                    "MiB",
                    two["pss_after_mib"],
                    TARGET_TWO_WORKERS_MIB,
                    "≤",
                )
            )
        serving, mlserver = memory.get("modelyard-serving"), memory.get("mlserver")
        if serving and mlserver:
            rows.append(
                (
                    "`serving` replica, 1 worker, RSS ÷ MLServer's (same models)",
                    "x",
                    round(serving["rss_mib"] / mlserver["rss_mib"], 2),
                    TARGET_SERVING_VS_MLSERVER,
                    "≤",
                )
            )
        if uploads:
            rows.append(
                ("skops upload p50, warm", "ms", uploads["warm_p50_ms"], TARGET_WARM_UPLOAD_MS, "≤")
            )
            rows.append(
                (
                    "first upload after start",
                    "ms",
                    uploads["first_upload_ms"],
                    TARGET_FIRST_UPLOAD_MS,
                    "≤",
                )
            )
        cold = self.report.cold_start.get(first_model)
        if cold:
            rows.append(
                (
                    f"{first_model} cold start (upload answered → first prediction)",
                    "ms",
                    cold["upload_to_first_prediction_ms"],
                    TARGET_COLD_START_MS,
                    "≤",
                )
            )
        self.report.targets = [
            {
                "what": what,
                "unit": unit,
                "measured": measured,
                "target": goal,
                "met": measured is not None and measured <= goal,
            }
            for what, unit, measured, goal, _ in rows
        ]

    def markdown(self) -> str:
        m = self.report.meta
        lines = [
            f"# Modelyard bench, {m['started_at']}",
            "",
            f"{m['cpus']} CPUs shared by server and wrk (load average at start "
            f"{', '.join(map(str, m['load_average_at_start']))}); {m['workers']} worker(s) for Modelyard "
            f"and the floor, MLServer 1 process; Modelyard on {m['database']} with auth and "
            f"prediction logging on, log level WARNING (no access log); {m['duration_s']:g} s "
            "per cell. Ratios are req/s against MLServer's best configuration for the same "
            "model, rows and connections (V2, its only route) and against the floor on the "
            "same route.",
            "",
            "| system | model | rows | conns | route | req/s | p50 ms | p99 ms | non-2xx "
            "| vs MLServer | vs floor |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        order = {
            s: i
            for i, s in enumerate(("modelyard", "modelyard-90/10", "floor", *MLSERVER_CONFIGS))
        }
        for r in sorted(
            self.report.results,
            key=lambda r: (r.model, r.rows, r.connections, r.route, order.get(r.system, 9)),
        ):
            lines.append(
                f"| {r.system} | {r.model} | {r.rows} | {r.connections} | {r.route} "
                f"| {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.non_2xx + r.socket_errors} "
                f"| {fmt_ratio(r.vs_mlserver)} | {fmt_ratio(r.vs_floor)} |"
            )
        lines += ["", "## Cold start (Modelyard: upload answered → first prediction answered)", ""]
        lines += ["| model | upload ms | upload → first prediction ms | file bytes |"]
        lines += ["|---|---:|---:|---:|"]
        for model, c in self.report.cold_start.items():
            lines.append(
                f"| {model} | {c['upload_ms']} | {c['upload_to_first_prediction_ms']} "
                f"| {c['file_bytes']:,} |"
            )
        up = self.report.uploads
        if up:
            lines += [
                "",
                f"Uploads of the {up['model']} skops file ({up['file_bytes']:,} bytes): the first "
                f"after start {up['first_upload_ms']} ms (answered "
                f"{up['first_upload_after_ready_ms']} ms after `/health` first answered); then "
                f"{len(up['warm_ms'])} more, p50 {up['warm_p50_ms']} ms, max {up['warm_max_ms']} ms.",
            ]
        if self.report.targets:
            lines += ["", "## Targets (#12, a lean process)", ""]
            lines += ["| what | measured | target | met |", "|---|---:|---:|---|"]
            for t in self.report.targets:
                lines.append(
                    f"| {t['what']} | {t['measured']} {t['unit']} | ≤ {t['target']:g} {t['unit']} "
                    f"| {'yes' if t['met'] else '**no**'} |"
                )
        lines += ["", "## Memory (VmRSS of the server process and its children)", ""]
        lines += [
            "Modelyard: before the upload and after every worker served the model (the host's "
            "upload probe process, started by `serve`, is one of the processes from the start; "
            "each worker has scikit-learn before its first request: with several, forked from "
            "`serve`, which imported it). "
            "modelyard-serving: a `MODELYARD_ROLE=serving` replica with one worker on the same "
            "data, after serving every model. Others: all models loaded and warm. RSS counts a "
            "page once per process that maps it; PSS counts pages shared between processes "
            "(libraries; what forked workers share with `serve`) once; USS only the pages no "
            "other process maps.",
            "",
            "| what | processes | before MiB | after MiB | delta MiB | PSS after MiB "
            "| USS after MiB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for what, mem in self.report.memory.items():
            if "delta_mib" in mem:
                lines.append(
                    f"| {what} | {mem['processes']} | {mem['rss_before_mib']} "
                    f"| {mem['rss_after_mib']} | {mem['delta_mib']} | {mem['pss_after_mib']} "
                    f"| {mem.get('uss_after_mib', '')} |"
                )
            else:
                lines.append(
                    f"| {what} | {mem['processes']} | | {mem['rss_mib']} | | {mem['pss_mib']} "
                    f"| {mem.get('uss_mib', '')} |"
                )
        last = [m for w, m in self.report.memory.items() if "after_by_process_mib" in m]
        if last:
            lines += [
                "",
                "Modelyard's processes at the end of the uploads (RSS, PSS, USS MiB):",
                "",
            ]
            pss_uss = last[-1].get("after_by_process_pss_uss_mib", {})
            lines += [
                f"- {mib}, {', '.join(map(str, pss_uss.get(what, [])))}: `{what}`"
                for what, mib in last[-1]["after_by_process_mib"].items()
            ]
        log = self.report.prediction_log
        if log:
            verdict = "consistent" if log.get("ok") else "**MISMATCH**"
            lines += [
                "",
                f"## Prediction log: {verdict}",
                "",
                f"Modelyard answered {log['sent_2xx']} requests 2xx and {log['sent_non_2xx']} "
                f"non-2xx (wrk counts + the driver's own); {log['wrk_in_flight']} more were "
                "in flight when wrk stopped (sent, never answered to wrk; served or not). "
                f"Logged via the API: {log.get('api')}; in the table after shutdown: "
                f"{log.get('table')}.",
            ]
        if self.report.skipped:
            lines += ["", "## Skipped", ""]
            lines += [f"- {system}: {why}" for system, why in self.report.skipped.items()]
        return "\n".join(lines) + "\n"

    def write(self) -> str:
        RESULTS.mkdir(exist_ok=True)
        document = asdict(self.report)
        text = self.markdown()
        for name in (f"{self.stamp}.json", "latest.json"):
            (RESULTS / name).write_text(json.dumps(document, indent=2) + "\n")
        for name in (f"{self.stamp}.md", "latest.md"):
            (RESULTS / name).write_text(text)
        return text


def memory_after(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    kib, processes = rss_tree(proc.pid)
    return {
        "rss_mib": round(kib / 1024, 1),
        "pss_mib": round(pss_tree(proc.pid) / 1024, 1),
        "uss_mib": round(uss_tree(proc.pid) / 1024, 1),
        "processes": processes,
    }


def fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def expect(answer: httpx.Response, status: int, what: str) -> httpx.Response:
    if answer.status_code != status:
        raise BenchError(f"{what}: HTTP {answer.status_code} {answer.text[:300]}")
    return answer


def pg(sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
    """Run one statement on the local PostgreSQL with asyncpg (the project's own driver)."""
    import asyncpg

    async def go() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    try:
        return asyncio.run(go())
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"PostgreSQL at 127.0.0.1:5432: {exc}") from exc


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        wrk_path()
    except BenchError as exc:
        say(str(exc))
        return 2
    work = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    say(f"work directory {work}; {args.duration:g} s per cell; workers {args.workers}")
    bench = Bench(args, work)
    try:
        skops_dir = work / "models-skops"
        skops_dir.mkdir()
        for model in args.models:
            bench_models.save(bench_models.build(model), skops_dir / f"{model}.skops", "skops")
        for system in args.systems:
            say(f"--- {system}")
            bench.run_system(system)
        bench.compare()
        bench.check_targets()
        print(bench.write())  # noqa: T201
        say(f"written to {RESULTS / (bench.stamp + '.md')} and latest.md/json")
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    failed = "modelyard" in bench.report.skipped or not bench.report.prediction_log.get("ok", True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
