"""A batch job predicts under the input limits of one prediction request (the in-process worker;
`test_worker.py` has the same for `modelyard worker`), on both databases."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from modelyard.db.tables import BatchJob
from tests.jobs.helpers import (
    CHUNK_ROWS,
    JOB_SETTINGS,
    assert_scored_like,
    create_job,
    csv_bytes,
    finished,
    iris_rows,
    put_file,
    read_csv,
    wait_for_job,
)
from tests.support.factories import make_account, make_version, serve
from tests.support.settings import make_settings

# Fewer than CHUNK_ROWS: the request's row limit, not the job's chunk size, bounds a chunk.
MAX_BATCH_ROWS = 3


async def test_a_chunk_holds_at_most_the_rows_one_request_may_carry(
    tmp_path: Path, database_url: str, engine: AsyncEngine, iris_skops: Path
) -> None:
    assert MAX_BATCH_ROWS < CHUNK_ROWS
    settings = make_settings(tmp_path, database_url, **JOB_SETTINGS, max_batch_rows=MAX_BATCH_ROWS)
    rows = iris_rows(8)
    async with serve(settings) as client:
        account = await make_account(client)
        await make_version(client, account, iris_skops)
        await put_file(client, account, "in.csv", csv_bytes(rows))
        too_many = await client.post(
            "/api/v1/predict/iris",
            json={"inputs": rows[: MAX_BATCH_ROWS + 1]},
            headers=account.headers,
        )
        # What the job must write, from requests the API takes.
        expected = []
        for start in range(0, len(rows), MAX_BATCH_ROWS):
            response = await client.post(
                "/api/v1/predict/iris",
                json={"inputs": rows[start : start + MAX_BATCH_ROWS]},
                headers=account.headers,
            )
            assert response.status_code == 200, response.text
            body = response.json()
            for i, (label, proba) in enumerate(
                zip(body["predictions"], body["probabilities"], strict=True)
            ):
                expected.append([str(start + i), str(label), *(str(p) for p in proba)])

        created = await create_job(client, account)
        job = await wait_for_job(client, account, created.json()["id"], finished, "finishes")
        output = await client.get("/api/v1/files/download/out/scored.csv", headers=account.headers)
    async with AsyncSession(engine) as db:
        parts = await db.scalar(
            select(BatchJob.parts_done).where(BatchJob.id == uuid.UUID(job["id"]))
        )

    assert too_many.status_code == 422
    assert job["status"] == "succeeded", job
    # 8 rows, at most 3 a chunk: 3 + 3 + 2.
    assert (job["rows_done"], parts) == (8, 3)
    assert_scored_like(read_csv(output.content)[1:], expected)


async def test_a_job_whose_rows_are_wider_than_a_request_may_be_fails_as_the_request_does(
    tmp_path: Path, database_url: str, engine: AsyncEngine, iris_skops: Path
) -> None:
    # iris takes 4 features: no request, of however few rows, fits a budget of 3 values.
    settings = make_settings(tmp_path, database_url, **JOB_SETTINGS, max_predict_elements=3)
    async with serve(settings) as client:
        account = await make_account(client)
        await make_version(client, account, iris_skops)
        await put_file(client, account, "in.csv", csv_bytes(iris_rows(5)))
        request = await client.post(
            "/api/v1/predict/iris", json={"inputs": iris_rows(1)}, headers=account.headers
        )

        created = await create_job(client, account)
        job = await wait_for_job(client, account, created.json()["id"], finished, "finishes")
        output = await client.get("/api/v1/files/download/out/scored.csv", headers=account.headers)

    refused = "1 rows of 4 values is 4 values, more than the 3 allowed per request"
    assert request.status_code == 422
    assert request.json()["detail"] == refused
    assert job["status"] == "failed", job
    assert job["error"] == refused
    assert job["rows_done"] == 0
    assert output.status_code == 404
