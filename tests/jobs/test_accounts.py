"""What one account's batch jobs may cost the others, and who may stop them: the cap of queued
and running jobs, fair order in the in-process worker, admins cancelling anyone's job,
deactivation and erasure stopping a person's jobs. Both databases."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelyard.config import Settings
from modelyard.files.service import area
from modelyard.jobs.queue import InProcessJobs
from modelyard.jobs.runner import PARTS_PREFIX
from modelyard.state import AppState
from tests.jobs.helpers import (
    CHUNK_ROWS,
    JOB_SETTINGS,
    create_job,
    csv_bytes,
    finished,
    iris_rows,
    put_file,
    wait_for_job,
)
from tests.support.factories import Account, make_api_key, make_version
from tests.support.polling import wait_until
from tests.support.problems import assert_problem
from tests.support.settings import make_settings

MAX_ACTIVE = 4
# Enough chunks that the job is still running when the test acts on it.
LONG_ROWS = CHUNK_ROWS * 3000


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path, database_url, **JOB_SETTINGS, batch_job_max_active_per_account=MAX_ACTIVE
    )


@pytest.fixture
def worker(app: FastAPI) -> InProcessJobs:
    state: AppState = app.state.modelyard
    assert isinstance(state.batch_jobs, InProcessJobs)
    return state.batch_jobs


@pytest.fixture
async def stopped(worker: InProcessJobs) -> InProcessJobs:
    """The in-process worker, stopped: jobs created meanwhile stay queued until `start()`."""
    await worker.aclose()
    return worker


async def ready(client: httpx.AsyncClient, account: Account, iris_skops: Path, rows: int) -> None:
    """Give `account` the iris model and an input file `in.csv` of `rows` rows."""
    await make_version(client, account, iris_skops)
    await put_file(client, account, "in.csv", csv_bytes(iris_rows(rows)))


async def job_of(client: httpx.AsyncClient, account: Account, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/batch-jobs/{job_id}", headers=account.headers)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


async def wait_until_gone(app: FastAPI, prefix: str, what: str) -> None:
    """Wait (bounded) until the store holds nothing under `prefix`."""
    state: AppState = app.state.modelyard

    async def gone() -> bool:
        return not [info.key async for info in state.store.list(prefix)]

    await wait_until(gone, what)


# --- caps and order ------------------------------------------------------------------------------


async def test_past_its_cap_of_queued_and_running_jobs_an_account_gets_429_with_retry_after(
    client: httpx.AsyncClient,
    user: Account,
    other_user: Account,
    iris_skops: Path,
    stopped: InProcessJobs,
) -> None:
    await ready(client, user, iris_skops, 5)
    await ready(client, other_user, iris_skops, 5)
    accepted = [await create_job(client, user) for _ in range(MAX_ACTIVE)]

    refused = await create_job(client, user)
    others = await create_job(client, other_user)
    await client.post(f"/api/v1/batch-jobs/{accepted[0].json()['id']}/cancel", headers=user.headers)
    after_a_cancel = await create_job(client, user)

    assert [r.status_code for r in accepted] == [202] * MAX_ACTIVE
    problem = assert_problem(refused, 429)
    assert problem["type"].endswith("/too-many-batch-jobs")
    assert f"{MAX_ACTIVE} queued and running batch jobs" in problem["detail"]
    assert int(refused.headers["retry-after"]) > 0
    assert others.status_code == 202
    assert after_a_cancel.status_code == 202
    listed = await client.get("/api/v1/batch-jobs?status=queued", headers=user.headers)
    assert listed.json()["total"] == MAX_ACTIVE


async def test_another_accounts_job_waits_behind_at_most_one_of_a_flood(
    client: httpx.AsyncClient,
    user: Account,
    other_user: Account,
    iris_skops: Path,
    stopped: InProcessJobs,
) -> None:
    await ready(client, user, iris_skops, CHUNK_ROWS * 3)
    await ready(client, other_user, iris_skops, CHUNK_ROWS * 3)
    # The flood is queued first, the other account's one job last: FIFO would run it last.
    flood = [(await create_job(client, user)).json()["id"] for _ in range(MAX_ACTIVE)]
    single = (await create_job(client, other_user)).json()["id"]

    stopped.start()
    jobs = [await wait_for_job(client, user, j, finished, "a flood job") for j in flood]
    jobs.append(await wait_for_job(client, other_user, single, finished, "the single job"))

    assert all(job["status"] == "succeeded" for job in jobs), jobs
    order = [job["id"] for job in sorted(jobs, key=lambda j: j["started_at"])]
    assert order.index(single) <= 1, order


# --- who may stop a job --------------------------------------------------------------------------


async def test_an_admin_cancels_another_users_job(
    client: httpx.AsyncClient,
    user: Account,
    admin: Account,
    iris_skops: Path,
    stopped: InProcessJobs,
) -> None:
    await ready(client, user, iris_skops, 5)
    job_id = (await create_job(client, user)).json()["id"]

    cancelled = await client.post(f"/api/v1/batch-jobs/{job_id}/cancel", headers=admin.headers)

    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert (await job_of(client, user, job_id))["status"] == "cancelled"


async def test_an_admin_key_limited_to_models_cannot_cancel_another_users_job(
    client: httpx.AsyncClient,
    user: Account,
    admin: Account,
    iris_skops: Path,
    stopped: InProcessJobs,
) -> None:
    await ready(client, user, iris_skops, 5)
    job_id = (await create_job(client, user)).json()["id"]
    key = await make_api_key(client, admin, scopes=["predict", "admin"], models=["iris"])

    response = await client.post(f"/api/v1/batch-jobs/{job_id}/cancel", headers={"X-API-Key": key})

    assert_problem(response, 404)
    assert (await job_of(client, user, job_id))["status"] == "queued"


async def test_deactivating_a_user_stops_their_running_and_queued_jobs(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    admin: Account,
    iris_skops: Path,
) -> None:
    await ready(client, user, iris_skops, LONG_ROWS)
    running = (await create_job(client, user)).json()["id"]
    queued = (await create_job(client, user, output_path="out/second.csv")).json()["id"]
    await wait_for_job(client, user, running, lambda j: j["rows_done"] > 0, "the job starts")

    deactivated = await client.patch(
        f"/api/v1/users/{user.id}", json={"is_active": False}, headers=admin.headers
    )
    first = await wait_for_job(client, admin, running, finished, "the running job stops")
    second = await wait_for_job(client, admin, queued, finished, "the queued job ends")

    assert deactivated.status_code == 200, deactivated.text
    assert first["status"] == "cancelled", first
    assert 0 < first["rows_done"] < LONG_ROWS
    assert (second["status"], second["rows_done"]) == ("cancelled", 0)
    state: AppState = app.state.modelyard
    assert [info.key async for info in state.store.list(f"{area(uuid.UUID(user.id))}out/")] == []
    await wait_until_gone(app, f"{PARTS_PREFIX}/", "the cancelled jobs' parts are deleted")


async def test_erasing_an_account_stops_its_running_job_and_leaves_none_of_its_parts(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    admin: Account,
    iris_skops: Path,
) -> None:
    await ready(client, user, iris_skops, LONG_ROWS)
    job_id = (await create_job(client, user)).json()["id"]
    await wait_for_job(client, user, job_id, lambda j: j["rows_done"] > 0, "the job starts")

    erased = await client.delete(f"/api/v1/users/{user.id}", headers=admin.headers)

    assert erased.status_code == 204, erased.text
    # The job went with the account; its run stops at its next chunk and deletes its parts.
    await wait_until_gone(app, f"{PARTS_PREFIX}/", "the erased job's parts are deleted")
    assert_problem(await client.get(f"/api/v1/batch-jobs/{job_id}", headers=admin.headers), 404)
    await wait_until_gone(app, area(uuid.UUID(user.id)), "the erased files area is empty")
