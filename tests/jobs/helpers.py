"""What the batch job tests share: CSV files, polling a job, direct predictions to compare, a
running job's row."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.db.tables import BatchJob
from modelyard.db.types import utcnow, uuid7
from tests.support.factories import Account
from tests.support.polling import wait_until

# A wait that reaches its bound has failed; none asserts a duration.
WAIT_SECONDS = 60.0
IRIS_HEADER = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
# The in-process worker polls often and scores in small chunks, so a small file still goes
# through several chunks, parts and progress commits.
CHUNK_ROWS = 7
JOB_SETTINGS: dict[str, object] = {
    "batch_job_chunk_rows": CHUNK_ROWS,
    "batch_job_poll_seconds": 0.05,
    "prediction_log_flush_ms": 10,
}


def iris_rows(n: int, *, seed: int = 7) -> list[list[float]]:
    """Return `n` iris-shaped rows (rounded, so their CSV text is short and exact)."""
    rng = np.random.default_rng(seed)
    low, high = np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
    values = np.round(rng.uniform(low, high, size=(n, 4)), 1)
    return [[float(v) for v in row] for row in values]


def csv_bytes(rows: list[list[Any]], header: list[str] = IRIS_HEADER) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


async def put_file(client: httpx.AsyncClient, account: Account, path: str, data: bytes) -> None:
    response = await client.post(
        "/api/v1/files/upload",
        files={"file": ("data.csv", data, "text/csv")},
        data={"path": path},
        headers=account.headers,
    )
    assert response.status_code == 201, response.text


async def create_job(client: httpx.AsyncClient, account: Account, **body: Any) -> httpx.Response:
    payload = {"model": "iris", "input_path": "in.csv", "output_path": "out/scored.csv", **body}
    return await client.post("/api/v1/batch-jobs", json=payload, headers=account.headers)


async def wait_for_job(
    client: httpx.AsyncClient,
    account: Account,
    job_id: str,
    condition: Callable[[dict[str, Any]], bool],
    what: str,
    bound_seconds: float = WAIT_SECONDS,
) -> dict[str, Any]:
    """Poll the job until `condition` holds; fail with its last state past the bound."""
    job: dict[str, Any] = {}

    async def holds() -> bool:
        nonlocal job
        response = await client.get(f"/api/v1/batch-jobs/{job_id}", headers=account.headers)
        assert response.status_code == 200, response.text
        job = response.json()
        return condition(job)

    await wait_until(holds, lambda: f"{what}; the job is {job}", seconds=bound_seconds)
    return job


def finished(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


async def expected_output(
    client: httpx.AsyncClient, account: Account, rows: list[list[float]]
) -> list[list[str]]:
    """Return the output lines a job must write for `rows`: direct predictions of the same rows
    through the predict API, as CSV cells."""
    lines: list[list[str]] = []
    for start in range(0, len(rows), 5000):
        response = await client.post(
            "/api/v1/predict/iris",
            json={"inputs": rows[start : start + 5000]},
            headers=account.headers,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        for i, (label, proba) in enumerate(
            zip(body["predictions"], body["probabilities"], strict=True)
        ):
            lines.append([str(start + i), str(label), *(str(p) for p in proba)])
    return lines


def assert_scored_like(lines: list[list[str]], expected: list[list[str]]) -> None:
    """Assert a job's output lines are the direct predictions `expected`: the row numbers and
    labels exactly, the probabilities to a tolerance (a batch's last digits differ from those of
    other batch sizes on some CPUs, e.g. 1.3814790681165184e-06 and 1.381479068116513e-06)."""
    assert [line[:2] for line in lines] == [line[:2] for line in expected]
    assert [len(line) for line in lines] == [len(line) for line in expected]
    got = [float(cell) for line in lines for cell in line[2:]]
    want = [float(cell) for line in expected for cell in line[2:]]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def read_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode())))


def running_job(owner_id: str, version: dict[str, Any], *, rows_total: int) -> BatchJob:
    """A job row as a worker holds it: running, and leased for an hour, so that no worker takes
    it over and the test moves its progress itself."""
    now = utcnow()
    return BatchJob(
        id=uuid7(),
        owner_id=uuid.UUID(owner_id),
        model_id=uuid.UUID(version["model_id"]),
        model_name=version["model_name"],
        version_id=uuid.UUID(version["id"]),
        version=version["version"],
        input_path="in.csv",
        output_path="out.csv",
        format="csv",
        status="running",
        rows_done=0,
        rows_total=rows_total,
        worker_token="test-worker",
        lease_until=now + timedelta(hours=1),
        started_at=now,
    )
