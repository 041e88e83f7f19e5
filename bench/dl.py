"""The deep-learning cells of `make bench`: ResNet-18 and a transformer encoder, V2 binary.

    .venv/bin/python bench/dl.py [--workers 2] [--duration 10] [--connections 1,8]

The networks of tests/serving/dl_models.py (random weights, exported here by torch's dynamo
exporter; torch is a test dependency: without it this bench says so and stops) are uploaded to
`modelyard serve --workers N` and served to the floor app (bench/floor.py) running the same ONNX
file in-process with the same workers and intra-op threads (Modelyard's default: the cores
divided by the workers). Cells: ResNet-18 with one 1x3x224x224 FP32 image, the transformer
encoder with INT64 token ids and attention mask of sequence 128, one row, each at 1 and 8
connections, V2 binary tensors in and out. Also reported: each upload's duration (ResNet-18's is
its upload check) and cold start (upload answered -> first prediction). Results go to
bench/results/dl-latest.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from run import (  # noqa: E402 - bench/ is not a package
    RESULTS,
    VENV_BIN,
    BenchError,
    expect,
    free_port,
    run_wrk,
    say,
    start,
    stop,
    wait_http,
)

SEQUENCE = 128
WARMUP_REQUESTS = 20
# Issue #25's targets: Modelyard's req/s over the floor's.
TARGET_ONE_CONNECTION = 0.9
TARGET_EIGHT_CONNECTIONS = 1.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per cell")
    p.add_argument("--quick", action="store_true", help="3 s per cell")
    p.add_argument("--connections", default="1,8")
    return p.parse_args(argv)


def export_networks(folder: Path) -> dict[str, Path]:
    try:
        from tests.serving import dl_models
    except ImportError as exc:  # pragma: no cover - torch is in the test group
        raise BenchError(f"the networks need torch (the test dependency group): {exc}") from exc
    paths = {}
    for name, model in (("resnet18", "resnet18"), ("encoder", "transformer")):
        path = folder / f"{name}.onnx"
        dl_models.export(dl_models.NETWORKS[model], "dynamo", path)
        paths[name] = path
    return paths


def inputs_of(name: str) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    if name == "resnet18":
        return {"images": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)}
    ids = rng.integers(0, 1000, (1, SEQUENCE), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def v2_binary_body(inputs: dict[str, np.ndarray[Any, Any]]) -> tuple[bytes, int]:
    """A V2 request with every input as binary data, asking for binary outputs."""
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatypes[value.dtype],
                    "shape": list(value.shape),
                    "parameters": {"binary_data_size": value.nbytes},
                }
                for name, value in inputs.items()
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + b"".join(value.tobytes() for value in inputs.values()), len(header)


def account(base: str) -> str:
    email, password = f"bench-{uuid.uuid4().hex[:8]}@example.com", uuid.uuid4().hex
    with httpx.Client(base_url=base + "/api/v1", timeout=30) as client:
        expect(client.post("/auth/register", json={"email": email, "password": password}), 201, "register")  # fmt: skip
        login = expect(client.post("/auth/login", json={"email": email, "password": password}), 200, "login")  # fmt: skip
        key = client.post(
            "/api-keys",
            json={"name": "bench", "scopes": ["read", "predict", "write"]},
            headers={"Authorization": f"Bearer {login.json()['access_token']}"},
        )
        return str(expect(key, 201, "API key").json()["key"])


def post(url: str, body: bytes, length: int, key: str | None) -> httpx.Response:
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(length),
        "Connection": "close",  # a fresh connection: each worker gets its turn
    }
    if key:
        headers["X-API-Key"] = key
    return httpx.post(url, content=body, headers=headers, timeout=60)


def measure(
    system: str, base: str, key: str | None, bodies: dict[str, tuple[Path, int]], args: Any
) -> list[dict[str, Any]]:
    results = []
    for name, (path, length) in bodies.items():
        url = f"{base}/v2/models/{name}/infer"
        for _ in range(WARMUP_REQUESTS):
            expect(post(url, path.read_bytes(), length, key), 200, f"{system} warm-up {name}")
        for connections in args.connections:
            raw = run_wrk(url, path, key, connections, args.duration, header_length=length)
            seconds = raw["duration_us"] / 1e6
            result = {
                "system": system,
                "model": name,
                "connections": connections,
                "requests": int(raw["requests"]),
                "non_2xx": int(raw["errors_status"]),
                "rps": raw["requests"] / seconds if seconds else 0.0,
                "p50_ms": raw["p50_us"] / 1000,
                "p99_ms": raw["p99_us"] / 1000,
            }
            results.append(result)
            say(
                f"{system:<10} {name:<9} c={connections:<2} {result['rps']:7.1f} req/s  "
                f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms"
                + (f"  NON-2XX {result['non_2xx']}" if result["non_2xx"] else "")
            )
    return results


def run_modelyard(work: Path, files: dict[str, Path], bodies: dict[str, tuple[Path, int]], args: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    port = free_port()
    env = {
        **os.environ,
        "MODELYARD_DATA_DIR": str(work / "modelyard-data"),
        "MODELYARD_LOG_LEVEL": "WARNING",
        "MODELYARD_AUTH_RATE_LIMIT_PER_MINUTE": "0",
    }
    env.pop("MODELYARD_DATABASE_URL", None)
    argv = [str(VENV_BIN / "modelyard"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = work / "modelyard.log"
    proc = start([*argv, "--workers", str(args.workers)], env=env, cwd=work, log=log)
    cold: dict[str, Any] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/health", proc, log)
        key = account(base)
        for name, path in files.items():
            started = time.perf_counter()
            with path.open("rb") as f:
                answer = httpx.post(
                    base + "/api/v1/models/upload",
                    files={"file": (path.name, f, "application/octet-stream")},
                    data={"name": name},
                    headers={"X-API-Key": key},
                    timeout=300,
                )
            uploaded = time.perf_counter()
            expect(answer, 201, f"upload {name}")
            body, length = bodies[name]
            first = post(f"{base}/v2/models/{name}/infer", body.read_bytes(), length, key)
            answered = time.perf_counter()
            expect(first, 200, f"first prediction of {name}")
            cold[name] = {
                "upload_ms": round((uploaded - started) * 1000, 1),
                "upload_to_first_prediction_ms": round((answered - uploaded) * 1000, 1),
                "file_bytes": path.stat().st_size,
                "cost": answer.json()["metadata"].get("cost"),
            }
            say(
                f"modelyard {name}: upload (with its check) {cold[name]['upload_ms']} ms, "
                f"upload→first prediction {cold[name]['upload_to_first_prediction_ms']} ms"
            )
        return measure("modelyard", base, key, bodies, args), cold
    finally:
        stop(proc)


def run_floor(work: Path, files: dict[str, Path], bodies: dict[str, tuple[Path, int]], args: Any) -> list[dict[str, Any]]:  # fmt: skip
    folder = work / "floor-models"
    folder.mkdir()
    for name, path in files.items():
        (folder / f"{name}.onnx").write_bytes(path.read_bytes())
    cores = len(os.sched_getaffinity(0))
    env = {
        **os.environ,
        "BENCH_FLOOR_MODELS": str(folder),
        "BENCH_FLOOR_THREADS": str(max(1, cores // args.workers)),  # Modelyard's default
    }
    port = free_port()
    argv = [str(VENV_BIN / "uvicorn"), "floor:app", "--app-dir", str(BENCH), "--host"]
    argv += ["127.0.0.1", "--port", str(port), "--workers", str(args.workers)]
    log = work / "floor.log"
    proc = start([*argv, "--log-level", "warning", "--no-access-log"], env=env, cwd=work, log=log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/health", proc, log)
        return measure("floor", base, None, bodies, args)
    finally:
        stop(proc)


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"# bench/dl.py {meta['started_at']}",
        "",
        f"{meta['workers']} workers, {meta['cpus']} CPUs, {meta['duration_s']:g} s per cell, "
        f"load average at start {meta['load_average_at_start']}; V2 binary, one row a request.",
        "",
        "| model | connections | modelyard req/s | p50 ms | p99 ms | floor req/s | p50 ms | vs floor | target |",  # noqa: E501
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    floor = {(r["model"], r["connections"]): r for r in report["results"] if r["system"] == "floor"}
    for r in report["results"]:
        if r["system"] != "modelyard":
            continue
        f = floor.get((r["model"], r["connections"]))
        ratio = r["rps"] / f["rps"] if f and f["rps"] else None
        target = TARGET_ONE_CONNECTION if r["connections"] == 1 else TARGET_EIGHT_CONNECTIONS
        lines.append(
            f"| {r['model']} | {r['connections']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {f['rps'] if f else float('nan'):.1f} | "
            f"{f['p50_ms'] if f else float('nan'):.1f} | "
            f"{'-' if ratio is None else f'{ratio:.2f}x'} | ≥ {target:g}x |"
        )
    lines += ["", "| model | upload (with its check) ms | upload → first prediction ms |", "|---|---:|---:|"]  # fmt: skip
    for name, cold in report["cold_start"].items():
        lines.append(f"| {name} | {cold['upload_ms']} | {cold['upload_to_first_prediction_ms']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",")]
    if args.quick:
        args.duration = 3.0
    report: dict[str, Any] = {
        "meta": {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "workers": args.workers,
            "duration_s": args.duration,
            "cpus": len(os.sched_getaffinity(0)),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        }
    }
    with tempfile.TemporaryDirectory(prefix="modelyard-dl-bench-") as folder:
        work = Path(folder)
        try:
            say("exporting ResNet-18 and the transformer encoder (torch, dynamo exporter)")
            files = export_networks(work)
            bodies = {}
            for name in files:
                body, length = v2_binary_body(inputs_of(name))
                path = work / f"{name}.body"
                path.write_bytes(body)
                bodies[name] = (path, length)
            report["results"], report["cold_start"] = run_modelyard(work, files, bodies, args)
            report["results"] += run_floor(work, files, bodies, args)
        except BenchError as exc:
            say(f"dl bench FAILED: {exc}")
            return 1
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dl-latest.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (RESULTS / "dl-latest.md").write_text(text)
    say("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
