"""A batch job cut short by an outage (the store or the database unreachable) is resumed, not
failed; one that keeps meeting outages fails after `MAX_ATTEMPTS` runs. In-process worker, both
databases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelyard.artifacts.store import StorageUnavailable
from modelyard.config import Settings
from modelyard.jobs.queue import InProcessJobs
from modelyard.jobs.runner import INTERNAL_FAILURE, MAX_ATTEMPTS, PARTS_PREFIX
from modelyard.state import AppState
from tests.jobs.helpers import (
    CHUNK_ROWS,
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
from tests.support.factories import Account, make_version
from tests.support.settings import make_settings


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # A short lease: an interrupted run's job is taken up again soon after.
    return make_settings(tmp_path, database_url, **JOB_SETTINGS, batch_job_lease_seconds=0.5)


def fail_part_writes(app: FastAPI, times: int) -> list[str]:
    """Make the job runner's store refuse its next `times` part writes as an unreachable store
    would; return the keys refused."""
    state: AppState = app.state.modelyard
    assert isinstance(state.batch_jobs, InProcessJobs)
    store = state.batch_jobs.runner.store
    put_file = store.put_file
    refused: list[str] = []

    async def flaky(key: str, *args: Any, **kwargs: Any) -> Any:
        if key.startswith(PARTS_PREFIX) and len(refused) < times:
            refused.append(key)
            raise StorageUnavailable()
        return await put_file(key, *args, **kwargs)

    store.put_file = flaky  # type: ignore[method-assign]
    return refused


async def test_a_job_interrupted_by_a_store_outage_resumes_with_exact_output(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    rows = iris_rows(CHUNK_ROWS * 4)
    await put_file(client, user, "in.csv", csv_bytes(rows))
    refused = fail_part_writes(app, times=2)

    created = await create_job(client, user)
    job = await wait_for_job(client, user, created.json()["id"], finished, "the job ends")
    output = await client.get("/api/v1/files/download/out/scored.csv", headers=user.headers)

    assert len(refused) == 2
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 3  # two runs cut short, the third went to the end
    assert (job["rows_done"], job["rows_total"]) == (len(rows), len(rows))
    assert_scored_like(read_csv(output.content)[1:], await expected_output(client, user, rows))


async def test_a_job_that_keeps_meeting_outages_fails_after_its_last_attempt(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    await put_file(client, user, "in.csv", csv_bytes(iris_rows(CHUNK_ROWS * 2)))
    refused = fail_part_writes(app, times=MAX_ATTEMPTS + 10)

    created = await create_job(client, user)
    job = await wait_for_job(client, user, created.json()["id"], finished, "the job ends")

    assert job["status"] == "failed", job
    assert job["attempts"] == MAX_ATTEMPTS
    assert job["error"] == INTERNAL_FAILURE
    assert len(refused) == MAX_ATTEMPTS
