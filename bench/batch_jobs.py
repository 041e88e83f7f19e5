"""A batch job's memory on a large CSV: the server's resident memory while it scores the file.

Writes an iris-shaped CSV of `--megabytes` in a temporary folder (100,000 random rows repeated
until the size is reached), starts `modelyard serve` without Redis (the in-process worker runs
the job) on SQLite, uploads an iris logistic regression and the file through the API, starts a
batch job and samples the server's RSS (/proc/<pid>/status) every 0.2 s until it finishes.
Prints the rows, the time, the RSS before the job and the highest RSS seen during it. Not a
test: it takes minutes on a 1 GB file. Linux only (/proc).

    python bench/batch_jobs.py --megabytes 1024
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

PASSWORD = "batch-bench-password"
BLOCK_ROWS = 100_000


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def write_csv(path: Path, megabytes: int) -> int:
    """Write a CSV of at least `megabytes` MiB; return its data rows."""
    rng = np.random.default_rng(0)
    low, high = np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
    block = io.StringIO()
    np.savetxt(block, rng.uniform(low, high, size=(BLOCK_ROWS, 4)), fmt="%.2f", delimiter=",")
    data = block.getvalue().encode()
    rows = 0
    with path.open("wb") as f:
        f.write(b"sepal_length,sepal_width,petal_length,petal_width\n")
        while f.tell() < megabytes * 1024 * 1024:
            f.write(data)
            rows += BLOCK_ROWS
    return rows


def write_model(path: Path) -> None:
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    skops.io.dump(LogisticRegression(max_iter=500).fit(x, y), path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=1024, help="size of the CSV (MiB)")
    parser.add_argument("--chunk-rows", type=int, default=10_000, help="rows per chunk")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="modelyard-batch-bench-"))
    server = None
    try:
        csv_path, model_path = folder / "big.csv", folder / "iris.skops"
        started = time.monotonic()
        rows = write_csv(csv_path, args.megabytes)
        size = csv_path.stat().st_size
        print(f"wrote {size / 2**20:.0f} MiB, {rows:,} rows in {time.monotonic() - started:.0f} s")
        write_model(model_path)
        port = free_port()
        env = {
            **os.environ,
            "MODELYARD_DATA_DIR": str(folder / "data"),
            "MODELYARD_MAX_UPLOAD_BYTES": str(size * 2),
            "MODELYARD_BATCH_JOB_CHUNK_ROWS": str(args.chunk_rows),
            "MODELYARD_LOG_LEVEL": "WARNING",
        }
        env.pop("MODELYARD_REDIS_URL", None)
        env.pop("MODELYARD_DATABASE_URL", None)
        log = (folder / "server.log").open("wb")
        server = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
            [sys.executable, "-m", "modelyard", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=600) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start; see " + str(folder))
                time.sleep(0.2)
            client.post(
                "/api/v1/auth/register", json={"email": "b@example.com", "password": PASSWORD}
            ).raise_for_status()
            token = client.post(
                "/api/v1/auth/login", json={"email": "b@example.com", "password": PASSWORD}
            ).json()["access_token"]
            client.headers["Authorization"] = f"Bearer {token}"
            with model_path.open("rb") as f:
                client.post(
                    "/api/v1/models/upload", data={"name": "iris"}, files={"file": f}
                ).raise_for_status()
            with csv_path.open("rb") as f:
                client.post(
                    "/api/v1/files/upload", data={"path": "big.csv"}, files={"file": f}
                ).raise_for_status()
            client.post(
                "/api/v1/predict/iris", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}
            ).raise_for_status()
            before = rss_kib(server.pid)
            created = client.post(
                "/api/v1/batch-jobs",
                json={"model": "iris", "input_path": "big.csv", "output_path": "scored.csv"},
            )
            if created.status_code != 202:
                raise SystemExit(f"job refused: {created.status_code} {created.text[:500]}")
            job = created.json()
            started, peak, refused = time.monotonic(), before, []
            job_url = f"/api/v1/batch-jobs/{job['id']}"
            while job["status"] in ("queued", "running"):
                time.sleep(0.2)
                peak = max(peak, rss_kib(server.pid))
                response = client.get(job_url)
                if response.status_code != 200:
                    refused.append(f"{response.status_code} {response.text[:200]}")
                    continue
                job = response.json()
            if refused:
                print(f"{len(refused)} polls refused, the first: {refused[0]}")
            seconds = time.monotonic() - started
            output = client.get("/api/v1/files").json()
        sizes = {item["path"]: item["size"] for item in output["items"]}
        print(
            f"job {job['status']}: {job['rows_done']:,} rows in {seconds:.0f} s "
            f"({job['rows_done'] / seconds:,.0f} rows/s), output {sizes.get('scored.csv', 0) / 2**20:.0f} MiB"
        )
        print(
            f"server RSS before the job: {before / 1024:.0f} MiB; "
            f"highest during it: {peak / 1024:.0f} MiB (chunks of {args.chunk_rows:,} rows)"
        )
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
