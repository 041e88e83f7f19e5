"""The dashboard's batch jobs page: the signed-in user's jobs with their progress, the output
download and cancelling, on both databases. (The live progress is tested in a real browser:
tests/web/browser.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI

from modelyard.state import AppState
from tests.audit.test_live import count_rows, start_running_job
from tests.jobs.helpers import create_job, csv_bytes, finished, iris_rows, put_file, wait_for_job
from tests.support.factories import Account, make_account, make_version
from tests.web.test_pages import PASSWORD, post_form


@asynccontextmanager
async def signed_in(app: FastAPI, account: Account) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client of the app with a dashboard session of `account`."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as browser:
        response = await post_form(
            browser, "/sign-in", "/sign-in", email=account.email, password=PASSWORD
        )
        assert response.status_code == 303, response.text
        yield browser


async def test_the_jobs_page_lists_the_callers_jobs_with_progress_and_output(
    app: FastAPI, client: httpx.AsyncClient, iris_skops: Path
) -> None:
    owner, other = await make_account(client), await make_account(client)
    await make_version(client, owner, iris_skops)
    await put_file(client, owner, "in.csv", csv_bytes(iris_rows(35)))
    job_id = (await create_job(client, owner)).json()["id"]
    job = await wait_for_job(client, owner, job_id, finished, "the in-process worker ends it")
    api_output = await client.get("/api/v1/files/download/out/scored.csv", headers=owner.headers)

    async with signed_in(app, owner) as browser:
        page = await browser.get("/jobs")
        output = await browser.get(f"/jobs/{job_id}/output")
        failed_only = await browser.get("/jobs", params={"status": "failed"})
    async with signed_in(app, other) as browser:
        others_page = await browser.get("/jobs")
        others_output = await browser.get(f"/jobs/{job_id}/output")

    assert job["status"] == "succeeded"
    assert page.status_code == 200
    row = re.search(rf'<tr data-job-id="{job_id}">(.*?)</tr>', page.text, re.S)
    assert row is not None, page.text
    assert "iris v1" in row.group(1)
    assert "<code>in.csv</code> → <code>out/scored.csv</code>" in row.group(1)
    assert "<td data-status>succeeded" in row.group(1)
    assert 'max="35" value="35"' in row.group(1)
    assert "35 / 35 rows" in row.group(1)
    assert f'href="/jobs/{job_id}/output"' in row.group(1)
    assert "data-live-jobs" in page.text  # app.js moves running jobs through /events
    assert output.status_code == 200
    assert output.content == api_output.content
    assert job_id not in failed_only.text
    assert job_id not in others_page.text
    assert others_output.status_code == 404


async def test_a_running_job_is_cancelled_from_the_page_once(
    app: FastAPI, client: httpx.AsyncClient, iris_skops: Path
) -> None:
    owner, other = await make_account(client), await make_account(client)
    version = await make_version(client, owner, iris_skops)
    state: AppState = app.state.modelyard
    job = await start_running_job(state, owner, version, rows_total=1_000)
    await count_rows(state, job, 400)
    cancel = f"/jobs/{job.id}/cancel"

    async with signed_in(app, other) as browser:
        refused = await post_form(browser, "/jobs", cancel)
    async with signed_in(app, owner) as browser:
        before = await browser.get("/jobs")
        cancelled = await post_form(browser, "/jobs", cancel)
        after = await browser.get("/jobs")
    shown = await client.get(f"/api/v1/batch-jobs/{job.id}", headers=owner.headers)

    assert refused.status_code == 404
    assert "400 / 1,000 rows" in before.text
    assert f'action="{cancel}"' in before.text
    assert cancelled.status_code == 303
    assert cancelled.headers["location"] == "/jobs"
    # Running: it stops at its next chunk; the page says so and offers no second cancel.
    assert shown.json()["cancel_requested"] is True
    assert 'running <span class="muted">(stopping)</span>' in after.text
    assert f'action="{cancel}"' not in after.text
