"""`/api/v1/batch-jobs` with the in-process worker (no Redis), on both databases."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from modelyard.db.tables import BatchJob, Prediction, StoredFile
from modelyard.jobs import service as jobs_service
from modelyard.state import AppState
from tests.jobs.helpers import (
    CHUNK_ROWS,
    IRIS_HEADER,
    JOB_SETTINGS,
    assert_scored_like,
    create_job,
    csv_bytes,
    expected_output,
    finished,
    iris_rows,
    put_file,
    read_csv,
    wait_for_job,
)
from tests.support.factories import Account, make_account, make_api_key, make_version, serve
from tests.support.polling import wait_until
from tests.support.problems import assert_problem
from tests.support.settings import S3_TEST_CREDENTIALS, make_settings


@pytest.fixture
async def iris(client: httpx.AsyncClient, user: Account, iris_skops: Path) -> None:
    await make_version(client, user, iris_skops)


async def test_csv_is_scored_end_to_end_like_direct_predictions(
    client: httpx.AsyncClient, user: Account, iris: None, app: FastAPI
) -> None:
    rows = iris_rows(50)
    await put_file(client, user, "in.csv", csv_bytes(rows))

    created = await create_job(client, user)
    assert created.status_code == 202, created.text
    job = await wait_for_job(client, user, created.json()["id"], finished, "the job finishes")
    output = await client.get("/api/v1/files/download/out/scored.csv", headers=user.headers)

    assert created.json()["status"] == "queued"
    assert created.json()["links"]["self"] == f"/api/v1/batch-jobs/{job['id']}"
    assert job["status"] == "succeeded", job
    assert (job["rows_done"], job["rows_total"], job["error"]) == (50, 50, None)
    assert job["finished_at"] is not None
    assert output.status_code == 200
    lines = read_csv(output.content)
    assert lines[0] == ["row", "prediction", "proba_0", "proba_1", "proba_2"]
    assert_scored_like(lines[1:], await expected_output(client, user, rows))
    # The parts (ceil(50 / 7) of them) were assembled, and go once the job has succeeded.
    state: AppState = app.state.modelyard

    async def parts_gone() -> bool:
        return not [info.key async for info in state.store.list("batch-jobs/")]

    await wait_until(parts_gone, "the parts leave the store")


async def test_a_job_logs_one_summary_prediction(
    client: httpx.AsyncClient, user: Account, iris: None, app: FastAPI
) -> None:
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(30)))

    created = await create_job(client, user)
    await wait_for_job(client, user, created.json()["id"], finished, "the job finishes")
    state: AppState = app.state.modelyard

    async def log_rows() -> list[Prediction]:
        await state.prediction_log.flush()
        async with state.sessions() as db:
            return list(await db.scalars(select(Prediction)))

    # The worker queues the summary just after it commits the job's status, which a poll can
    # see first: wait (bounded) for it to be queued.
    logged: list[Prediction] = []

    async def queued() -> bool:
        nonlocal logged
        logged = await log_rows()
        return bool(logged)

    await wait_until(queued, "the job's summary is logged")

    assert len(logged) == 1
    assert logged[0].protocol == "batch"
    assert logged[0].status == "success"
    assert logged[0].n_rows == 30
    assert logged[0].inputs == {"batch_job_id": created.json()["id"], "input_path": "in.csv"}
    assert logged[0].inference_time_ms is not None
    assert logged[0].inference_time_ms > 0


async def test_progress_counts_rows_in_chunks(
    client: httpx.AsyncClient, user: Account, iris: None, app: FastAPI
) -> None:
    n = CHUNK_ROWS * 40
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(n)))
    seen: set[int] = set()

    created = await create_job(client, user)

    def record(job: dict[str, object]) -> bool:
        seen.add(int(str(job["rows_done"])))
        return finished(job)

    job = await wait_for_job(client, user, created.json()["id"], record, "the job finishes")
    assert job["status"] == "succeeded"
    assert job["rows_total"] == n
    # Progress only moves by whole chunks.
    assert all(done % CHUNK_ROWS == 0 for done in seen)


async def test_columns_are_matched_by_name_and_extra_ones_ignored(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    schema = {"features": [{"name": n, "type": "float"} for n in IRIS_HEADER]}
    await make_version(client, user, iris_skops, input_schema=schema)
    rows = iris_rows(10)
    shuffled = [[f"id-{i}", r[3], r[1], r[0], r[2]] for i, r in enumerate(rows)]
    header = ["id", "petal_width", "sepal_width", "sepal_length", "petal_length"]
    await put_file(client, user, "in.csv", csv_bytes(shuffled, header))

    created = await create_job(client, user)
    job = await wait_for_job(client, user, created.json()["id"], finished, "the job finishes")
    output = await client.get("/api/v1/files/download/out/scored.csv", headers=user.headers)

    assert job["status"] == "succeeded", job
    assert_scored_like(read_csv(output.content)[1:], await expected_output(client, user, rows))


async def test_a_row_that_is_not_numbers_fails_the_job_saying_where(
    client: httpx.AsyncClient, user: Account, iris: None
) -> None:
    rows: list[list[object]] = [list(r) for r in iris_rows(20)]
    rows[12][2] = "abc"
    await put_file(client, user, "in.csv", csv_bytes(rows))

    created = await create_job(client, user)
    job = await wait_for_job(client, user, created.json()["id"], finished, "the job finishes")
    output = await client.get("/api/v1/files/download/out/scored.csv", headers=user.headers)

    assert job["status"] == "failed"
    # The row, its line and the column: never the value (who reads the error may not be allowed
    # to read the file).
    assert job["error"] == "row 13 (line 14), column 3: not a number"
    assert output.status_code == 404


async def test_a_header_that_does_not_fit_the_model_fails_the_job(
    client: httpx.AsyncClient, user: Account, iris: None
) -> None:
    await put_file(client, user, "in.csv", b"a,b,c\n1,2,3\n")

    created = await create_job(client, user)
    job = await wait_for_job(client, user, created.json()["id"], finished, "the job finishes")

    assert job["status"] == "failed"
    assert job["error"] == (
        "the model takes 4 features; the input file has 3 columns and lacks the columns f0, f1, f2, "
        "f3"
    )


async def test_cancel_stops_a_running_job_at_its_next_chunk(
    client: httpx.AsyncClient, user: Account, iris: None
) -> None:
    n = CHUNK_ROWS * 3000
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(n)))
    created = await create_job(client, user)
    job_id = created.json()["id"]
    await wait_for_job(client, user, job_id, lambda j: j["rows_done"] > 0, "the job starts")

    cancelled = await client.post(f"/api/v1/batch-jobs/{job_id}/cancel", headers=user.headers)
    job = await wait_for_job(client, user, job_id, finished, "the job stops")
    output = await client.get("/api/v1/files/download/out/scored.csv", headers=user.headers)

    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["cancel_requested"] is True
    assert job["status"] == "cancelled"
    assert 0 < job["rows_done"] < n
    assert output.status_code == 404


async def test_cancelling_a_finished_job_is_a_conflict(
    client: httpx.AsyncClient, user: Account, iris: None
) -> None:
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(5)))
    created = await create_job(client, user)
    job_id = created.json()["id"]
    await wait_for_job(client, user, job_id, finished, "the job finishes")

    response = await client.post(f"/api/v1/batch-jobs/{job_id}/cancel", headers=user.headers)

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"


async def test_other_users_jobs_are_not_found(
    client: httpx.AsyncClient, user: Account, other_user: Account, iris: None
) -> None:
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(5)))
    created = await create_job(client, user)
    job_id = created.json()["id"]

    shown = await client.get(f"/api/v1/batch-jobs/{job_id}", headers=other_user.headers)
    cancelled = await client.post(f"/api/v1/batch-jobs/{job_id}/cancel", headers=other_user.headers)
    listed = await client.get("/api/v1/batch-jobs", headers=other_user.headers)
    own = await client.get("/api/v1/batch-jobs", headers=user.headers)

    assert shown.status_code == 404
    assert shown.headers["content-type"] == "application/problem+json"
    assert cancelled.status_code == 404
    assert listed.json()["total"] == 0
    assert [j["id"] for j in own.json()["items"]] == [job_id]


async def test_another_users_model_and_input_are_not_found(
    client: httpx.AsyncClient, user: Account, other_user: Account, iris: None
) -> None:
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(5)))

    foreign_model = await create_job(client, other_user)
    await put_file(client, other_user, "mine.csv", csv_bytes(iris_rows(5)))
    missing_input = await create_job(client, user, input_path="mine.csv")

    assert foreign_model.status_code == 404
    assert missing_input.status_code == 404
    assert missing_input.json()["detail"] == "file 'mine.csv' not found"


@pytest.mark.parametrize(
    "body",
    [
        {"input_path": "../in.csv"},
        {"output_path": "/etc/out.csv"},
        {"output_path": "a//b.csv"},
        {"output_path": "in.csv"},
        {"format": "xlsx"},
        {"version": 0},
        {"version": True},
        {"status": "succeeded"},
    ],
)
async def test_invalid_requests_answer_422(
    client: httpx.AsyncClient, user: Account, iris: None, body: dict[str, object]
) -> None:
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(5)))

    response = await create_job(client, user, **body)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_parquet_without_pyarrow_answers_422(
    client: httpx.AsyncClient, user: Account, iris: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyarrow is a dependency, yet an installation may leave it out: as if it had.
    monkeypatch.setattr(jobs_service, "has_parquet", lambda: False)
    await put_file(client, user, "in.parquet", b"PAR1")

    response = await create_job(client, user, input_path="in.parquet", format="parquet")

    assert response.status_code == 422
    assert "pyarrow" in response.json()["detail"]


async def test_parquet_is_scored_like_csv(
    client: httpx.AsyncClient, user: Account, iris: None
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = iris_rows(40)
    table = pa.table({name: [r[i] for r in rows] for i, name in enumerate(IRIS_HEADER)})
    sink = io.BytesIO()
    # Small row groups: the job reads across several of them.
    pq.write_table(table, sink, row_group_size=9)
    await put_file(client, user, "in.parquet", sink.getvalue())

    created = await create_job(client, user, input_path="in.parquet", format="parquet")
    job = await wait_for_job(client, user, created.json()["id"], finished, "the job finishes")
    output = await client.get("/api/v1/files/download/out/scored.csv", headers=user.headers)

    assert job["status"] == "succeeded", job
    assert (job["rows_done"], job["rows_total"]) == (40, 40)
    assert_scored_like(read_csv(output.content)[1:], await expected_output(client, user, rows))


async def test_a_file_that_is_not_parquet_fails_the_job(
    client: httpx.AsyncClient, user: Account, iris: None
) -> None:
    await put_file(client, user, "in.parquet", csv_bytes(iris_rows(5)))

    created = await create_job(client, user, input_path="in.parquet", format="parquet")
    job = await wait_for_job(client, user, created.json()["id"], finished, "the job finishes")

    assert job["status"] == "failed"
    assert job["error"] == "the input file is not a readable Parquet file"


async def test_a_version_or_alias_picks_what_is_scored(
    client: httpx.AsyncClient, user: Account, iris: None, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    await client.put(
        "/api/v1/models/iris/aliases/champion", json={"version": 1}, headers=user.headers
    )
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(5)))

    default = await create_job(client, user)
    pinned = await create_job(client, user, version=1)
    aliased = await create_job(client, user, version="champion")
    unknown = await create_job(client, user, version=9)

    assert [r.json()["version"] for r in (default, pinned, aliased)] == [2, 1, 1]
    assert unknown.status_code == 404


async def test_an_archived_model_is_a_conflict(
    client: httpx.AsyncClient, user: Account, iris: None
) -> None:
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(5)))
    await client.delete("/api/v1/models/iris", headers=user.headers)

    response = await create_job(client, user)

    assert response.status_code == 409


async def test_starting_a_job_needs_predict_and_the_files_read_and_write_scopes(
    client: httpx.AsyncClient, user: Account, iris: None
) -> None:
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(5)))
    body = {"model": "iris", "input_path": "in.csv", "output_path": "o.csv"}

    async def start(scopes: list[str]) -> httpx.Response:
        key = await make_api_key(client, user, "-".join(scopes), scopes=scopes)
        return await client.post("/api/v1/batch-jobs", json=body, headers={"X-API-Key": key})

    no_predict = await start(["read", "write"])
    no_read = await start(["predict"])
    no_write = await start(["predict", "read"])
    allowed = await start(["predict", "read", "write"])

    assert assert_problem(no_predict, 403)["detail"] == "this API key lacks the `predict` scope"
    assert assert_problem(no_read, 403)["detail"] == "this API key lacks the `read` scope"
    assert assert_problem(no_write, 403)["detail"] == "this API key lacks the `write` scope"
    assert allowed.status_code == 202, allowed.text
    listed = await client.get("/api/v1/batch-jobs", headers=user.headers)
    assert [j["id"] for j in listed.json()["items"]] == [allowed.json()["id"]]


async def test_a_key_limited_to_models_may_not_name_files_through_a_job(
    client: httpx.AsyncClient, user: Account, iris: None
) -> None:
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(5)))
    await put_file(client, user, "keep.csv", b"precious\n")
    key = await make_api_key(client, user, scopes=["predict", "read", "write"], models=["iris"])
    headers = {"X-API-Key": key}

    # An existing input and a missing one are refused alike: nothing tells which files exist.
    existing = await client.post(
        "/api/v1/batch-jobs",
        json={"model": "iris", "input_path": "in.csv", "output_path": "keep.csv"},
        headers=headers,
    )
    missing = await client.post(
        "/api/v1/batch-jobs",
        json={"model": "iris", "input_path": "nowhere.csv", "output_path": "keep.csv"},
        headers=headers,
    )

    assert assert_problem(existing, 403) == assert_problem(missing, 403)
    assert existing.json()["type"].endswith("/outside-model-limit")
    # As the files routes answer the same key.
    files = await client.get("/api/v1/files", headers=headers)
    assert assert_problem(files, 403) == existing.json()
    assert (await client.get("/api/v1/batch-jobs", headers=user.headers)).json()["total"] == 0
    kept = await client.get("/api/v1/files/download/keep.csv", headers=user.headers)
    assert kept.content == b"precious\n"


async def test_a_key_limited_to_other_models_sees_none_of_the_jobs(
    client: httpx.AsyncClient, user: Account, iris: None
) -> None:
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(5)))
    assert (await create_job(client, user)).status_code == 202
    other_model = await make_api_key(client, user, scopes=["predict", "read"], models=["wine"])

    listed = await client.get("/api/v1/batch-jobs", headers={"X-API-Key": other_model})

    assert listed.json()["total"] == 0


async def test_an_output_path_that_is_a_folder_is_refused_at_creation(
    client: httpx.AsyncClient, user: Account, iris: None
) -> None:
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(5)))
    await put_file(client, user, "results/earlier.csv", b"row,prediction\n")

    response = await create_job(client, user, output_path="results")

    problem = assert_problem(response, 422)
    assert problem["detail"] == "output_path 'results' is a folder; name a file"
    assert (await client.get("/api/v1/batch-jobs", headers=user.headers)).json()["total"] == 0


async def test_an_output_path_inside_a_file_is_refused_at_creation(
    client: httpx.AsyncClient, user: Account, iris: None
) -> None:
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(5)))
    await put_file(client, user, "results", b"a file, not a folder\n")

    response = await create_job(client, user, output_path="results/scored.csv")

    problem = assert_problem(response, 422)
    assert problem["detail"] == (
        "output_path 'results/scored.csv' is inside 'results', which is a file"
    )
    assert (await client.get("/api/v1/batch-jobs", headers=user.headers)).json()["total"] == 0


async def test_a_job_runs_on_s3_storage_parts_and_output_alike(
    tmp_path: Path,
    database_url: str,
    engine: AsyncEngine,
    s3_endpoint: str,
    s3_bucket: str,
    iris_skops: Path,
) -> None:
    storage = {
        "storage_url": f"s3://{s3_bucket}/run-{uuid.uuid4().hex[:12]}",
        "s3_endpoint_url": s3_endpoint,
        **S3_TEST_CREDENTIALS,
    }
    settings = make_settings(
        tmp_path, database_url, batch_job_chunk_rows=CHUNK_ROWS, batch_job_poll_seconds=0.05,
        **storage,
    )  # fmt: skip
    async with serve(settings) as client:
        account = await make_account(client)
        await make_version(client, account, iris_skops)
        rows = iris_rows(30)
        await put_file(client, account, "in.csv", csv_bytes(rows))

        created = await create_job(client, account)
        job = await wait_for_job(client, account, created.json()["id"], finished, "finishes")
        output = await client.get("/api/v1/files/download/out/scored.csv", headers=account.headers)

        assert job["status"] == "succeeded", job
        assert_scored_like(
            read_csv(output.content)[1:], await expected_output(client, account, rows)
        )


async def test_a_chunk_holds_at_most_the_predict_element_budget(
    tmp_path: Path, database_url: str, engine: AsyncEngine, iris_skops: Path
) -> None:
    # iris takes 4 features: a budget of 8 values is 2 rows a chunk, fewer than CHUNK_ROWS.
    settings = make_settings(tmp_path, database_url, **JOB_SETTINGS, max_predict_elements=8)
    async with serve(settings) as client:
        account = await make_account(client)
        await make_version(client, account, iris_skops)
        await put_file(client, account, "in.csv", csv_bytes(iris_rows(9)))

        created = await create_job(client, account)
        job = await wait_for_job(client, account, created.json()["id"], finished, "finishes")
    async with AsyncSession(engine) as db:
        parts = await db.scalar(
            select(BatchJob.parts_done).where(BatchJob.id == uuid.UUID(job["id"]))
        )

    assert job["status"] == "succeeded", job
    assert (job["rows_done"], parts) == (9, 5)


async def test_a_parquet_input_past_the_row_limit_fails_before_a_row_is_scored(
    tmp_path: Path, database_url: str, engine: AsyncEngine, iris_skops: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    settings = make_settings(tmp_path, database_url, **JOB_SETTINGS, batch_job_max_rows=30)
    rows = iris_rows(31)
    sink = io.BytesIO()
    pq.write_table(pa.table({n: [r[i] for r in rows] for i, n in enumerate(IRIS_HEADER)}), sink)
    async with serve(settings) as client:
        account = await make_account(client)
        await make_version(client, account, iris_skops)
        await put_file(client, account, "in.parquet", sink.getvalue())

        created = await create_job(client, account, input_path="in.parquet", format="parquet")
        job = await wait_for_job(client, account, created.json()["id"], finished, "finishes")

    assert job["status"] == "failed"
    assert job["error"] == "the input file has 31 data rows, more than the 30 this server reads"
    assert job["rows_done"] == 0


async def counted_bytes(engine: AsyncEngine, account: Account) -> int:
    async with AsyncSession(engine) as db:
        total = await db.scalar(
            select(func.coalesce(func.sum(StoredFile.size_bytes), 0)).where(
                StoredFile.owner_id == uuid.UUID(account.id)
            )
        )
    return int(total or 0)


async def test_a_job_output_past_the_storage_quota_fails_the_job_and_writes_nothing(
    tmp_path: Path, database_url: str, engine: AsyncEngine, iris_skops: Path
) -> None:
    data = csv_bytes(iris_rows(50))
    quota = len(data) + 500  # the output takes some 2 KB
    settings = make_settings(tmp_path, database_url, **JOB_SETTINGS, storage_quota_bytes=quota)
    async with serve(settings) as client:
        account = await make_account(client)
        await make_version(client, account, iris_skops)
        await put_file(client, account, "in.csv", data)

        created = await create_job(client, account)
        job = await wait_for_job(client, account, created.json()["id"], finished, "finishes")
        output = await client.get("/api/v1/files/download/out/scored.csv", headers=account.headers)

    assert job["status"] == "failed"
    assert job["error"].startswith(
        f"the storage quota is exceeded: {len(data)} of {quota} bytes are used; the job's "
        "output needs "
    )
    assert output.status_code == 404
    assert await counted_bytes(engine, account) == len(data)


async def test_a_job_output_counts_against_the_storage_quota(
    tmp_path: Path, database_url: str, engine: AsyncEngine, iris_skops: Path
) -> None:
    data = csv_bytes(iris_rows(20))
    settings = make_settings(tmp_path, database_url, **JOB_SETTINGS, storage_quota_bytes=10_000)
    async with serve(settings) as client:
        account = await make_account(client)
        await make_version(client, account, iris_skops)
        await put_file(client, account, "in.csv", data)

        created = await create_job(client, account)
        job = await wait_for_job(client, account, created.json()["id"], finished, "finishes")
        output = await client.get("/api/v1/files/download/out/scored.csv", headers=account.headers)

    assert job["status"] == "succeeded", job
    assert await counted_bytes(engine, account) == len(data) + len(output.content)
