"""Batch jobs through Redis and `modelyard worker` processes, on both databases: a worker killed
mid-job (SIGKILL) leaves a job the next worker resumes from its last stored chunk."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.config import Settings
from tests.deploy.sources import run_worker_healthcheck
from tests.jobs.helpers import (
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
from tests.support import servers
from tests.support.factories import Account, make_account, make_version, serve
from tests.support.polling import wait_until
from tests.support.settings import TEST_SECRET_KEY, make_settings

CHUNK_ROWS = 10
# Enough chunks (each a stored part and a commit) that the job is still running when the test
# sees its first progress and kills the worker.
ROWS = CHUNK_ROWS * 500
LEASE_SECONDS = 2.0


@pytest.fixture
def queue_name() -> str:
    return f"test-batch-jobs-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def worker_settings(database_url: str, redis_url: str, queue_name: str) -> dict[str, str]:
    """The settings of the app and its workers, as MODELYARD_* names (lower case, no prefix)."""
    return {
        "database_url": database_url,
        "redis_url": redis_url,
        "secret_key": TEST_SECRET_KEY,
        "batch_job_queue": queue_name,
        "batch_job_chunk_rows": str(CHUNK_ROWS),
        "batch_job_lease_seconds": str(LEASE_SECONDS),
        "batch_job_poll_seconds": "0.1",
        "log_format": "json",
    }


@pytest.fixture
def settings(tmp_path: Path, worker_settings: dict[str, str]) -> Settings:
    values = {k: v for k, v in worker_settings.items() if k != "database_url"}
    return make_settings(tmp_path, worker_settings["database_url"], **values)


@pytest.fixture
async def redis_client(redis_url: str, queue_name: str) -> AsyncIterator[Redis]:
    """A client of the test Redis; the test's queue keys are deleted at the end."""
    redis = Redis.from_url(redis_url)
    yield redis
    for pattern in (f"saq:{queue_name}:*", f"saq:job:{queue_name}:*", f"saq:abort:*{queue_name}*"):
        async for key in redis.scan_iter(match=pattern):
            await redis.delete(key)
    await redis.aclose()


@pytest.fixture
async def app_client(
    settings: Settings, engine: AsyncEngine, redis_client: Redis
) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(settings) as client:
        yield client


@pytest.fixture
async def owner(app_client: httpx.AsyncClient, iris_skops: Path) -> Account:
    account = await make_account(app_client)
    await make_version(app_client, account, iris_skops)
    return account


@contextmanager
def worker(folder: Path, settings: dict[str, str], name: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run `modelyard worker` on the app's data folder (same store) until the block ends."""
    env = servers.environment(folder, **settings)
    log_path = folder / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelyard", "worker"],
            env=env,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=servers.STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def part_files(folder: Path) -> list[Path]:
    return [p for p in (folder / "data" / "artifacts" / "batch-jobs").rglob("*") if p.is_file()]


def exited(process: subprocess.Popen[bytes]) -> Callable[[], str | None]:
    """Tell why waiting on the worker is pointless: it exited."""

    def reason() -> str | None:
        code = process.poll()
        return None if code is None else f"the worker exited with {code}"

    return reason


def logged_events(path: Path, event: str) -> list[dict[str, object]]:
    found = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


async def test_a_job_resumes_after_its_worker_is_killed_without_duplicate_rows(
    app_client: httpx.AsyncClient,
    owner: Account,
    tmp_path: Path,
    worker_settings: dict[str, str],
) -> None:
    rows = iris_rows(ROWS)
    await put_file(app_client, owner, "in.csv", csv_bytes(rows))
    created = await create_job(app_client, owner)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]

    with worker(tmp_path, worker_settings, "first") as first:
        await wait_for_job(
            app_client, owner, job_id, lambda j: j["rows_done"] > 0, "the first worker scores"
        )
        first.kill()  # SIGKILL: no clean-up of any kind
        first.wait()
    interrupted = (
        await app_client.get(f"/api/v1/batch-jobs/{job_id}", headers=owner.headers)
    ).json()
    with worker(tmp_path, worker_settings, "second") as second:
        job = await wait_for_job(app_client, owner, job_id, finished, "the second worker finishes")
        # Once the output is written the parts go: the store keeps nothing of the job.
        await wait_until(
            lambda: not part_files(tmp_path), "the parts are deleted", stop=exited(second)
        )
    output = await app_client.get("/api/v1/files/download/out/scored.csv", headers=owner.headers)

    assert interrupted["status"] == "running"
    assert 0 < interrupted["rows_done"] < ROWS
    assert job["status"] == "succeeded", job
    # Two runs at least: a short lease on a busy machine may pass a third to take over, which
    # changes nothing in the output (the assertions below).
    assert job["attempts"] >= 2
    assert (job["rows_done"], job["rows_total"]) == (ROWS, ROWS)
    # The second run went on from where the first one's last committed chunk ended...
    started = logged_events(tmp_path / "second.log", "batch_job_started")
    assert int(str(started[0]["from_row"])) >= interrupted["rows_done"] > 0
    # ...and the output holds every row once, in order, as direct predictions give them.
    assert output.status_code == 200
    lines = read_csv(output.content)
    assert_scored_like(lines[1:], await expected_output(app_client, owner, rows))


async def test_a_queued_job_waits_for_a_worker_and_can_be_cancelled(
    app_client: httpx.AsyncClient, owner: Account, redis_client: Redis, queue_name: str
) -> None:
    await put_file(app_client, owner, "in.csv", csv_bytes(iris_rows(5)))
    created = await create_job(app_client, owner)
    job_id = created.json()["id"]
    entry = await redis_client.get(f"saq:job:{queue_name}:{job_id}")

    cancelled = await app_client.post(f"/api/v1/batch-jobs/{job_id}/cancel", headers=owner.headers)

    assert entry is not None  # on the queue, keyed by the job's id
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None


async def test_a_worker_runs_a_job_and_logs_progress(
    app_client: httpx.AsyncClient,
    owner: Account,
    tmp_path: Path,
    worker_settings: dict[str, str],
) -> None:
    rows = iris_rows(35)
    await put_file(app_client, owner, "in.csv", csv_bytes(rows))

    created = await create_job(app_client, owner)
    # A lease no pause of a busy test machine outlasts: this job runs once.
    with worker(tmp_path, {**worker_settings, "batch_job_lease_seconds": "60"}, "worker"):
        job = await wait_for_job(app_client, owner, created.json()["id"], finished, "done")
    output = await app_client.get("/api/v1/files/download/out/scored.csv", headers=owner.headers)

    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    assert_scored_like(read_csv(output.content)[1:], await expected_output(app_client, owner, rows))


async def test_a_worker_starts_another_accounts_job_right_after_the_first_of_a_flood(
    app_client: httpx.AsyncClient,
    owner: Account,
    iris_skops: Path,
    tmp_path: Path,
    worker_settings: dict[str, str],
) -> None:
    other = await make_account(app_client)
    await make_version(app_client, other, iris_skops)
    for account in (owner, other):
        await put_file(app_client, account, "in.csv", csv_bytes(iris_rows(CHUNK_ROWS * 3)))
    # Queued before any worker runs, the other account's one job last: the queue's FIFO
    # order would deliver it last.
    flood = [(await create_job(app_client, owner)).json()["id"] for _ in range(4)]
    single = (await create_job(app_client, other)).json()["id"]

    # One job at a time, and a lease no pause of a busy test machine outlasts.
    settings = {**worker_settings, "batch_job_concurrency": "1", "batch_job_lease_seconds": "60"}
    with worker(tmp_path, settings, "worker"):
        jobs = [await wait_for_job(app_client, owner, j, finished, "a flood job") for j in flood]
        jobs.append(await wait_for_job(app_client, other, single, finished, "the single job"))

    assert all(job["status"] == "succeeded" for job in jobs), jobs
    order = [job["id"] for job in sorted(jobs, key=lambda j: j["started_at"])]
    assert order.index(single) <= 1, order


async def test_a_running_worker_passes_the_container_health_check_and_a_stopped_one_fails(
    tmp_path: Path, worker_settings: dict[str, str], engine: AsyncEngine
) -> None:
    heartbeat = tmp_path / "worker.heartbeat"
    settings = {**worker_settings, "worker_heartbeat_file": str(heartbeat)}
    with worker(tmp_path, settings, "worker") as process:
        await wait_until(heartbeat.exists, "the first heartbeat", stop=exited(process))
        running = run_worker_healthcheck(heartbeat)
        process.terminate()
        assert process.wait(timeout=servers.STOP_TIMEOUT_SECONDS) == 0
    stopped = run_worker_healthcheck(heartbeat)

    assert running.returncode == 0, running.stderr
    assert stopped.returncode == 1  # a clean stop removes the file


async def test_a_worker_fails_a_job_whose_rows_are_wider_than_a_request_may_be(
    tmp_path: Path,
    worker_settings: dict[str, str],
    engine: AsyncEngine,
    redis_client: Redis,
    iris_skops: Path,
) -> None:
    # iris takes 4 features: no request fits a budget of 3 values, and no job either (the
    # worker predicts under the API's input limits).
    limited = {**worker_settings, "max_predict_elements": "3", "batch_job_lease_seconds": "60"}
    values = {k: v for k, v in limited.items() if k != "database_url"}
    async with serve(make_settings(tmp_path, limited["database_url"], **values)) as client:
        account = await make_account(client)
        await make_version(client, account, iris_skops)
        await put_file(client, account, "in.csv", csv_bytes(iris_rows(5)))
        request = await client.post(
            "/api/v1/predict/iris", json={"inputs": iris_rows(1)}, headers=account.headers
        )
        created = await create_job(client, account)
        with worker(tmp_path, limited, "worker"):
            job = await wait_for_job(
                client, account, created.json()["id"], finished, "the worker ends the job"
            )

    refused = "1 rows of 4 values is 4 values, more than the 3 allowed per request"
    assert request.status_code == 422
    assert request.json()["detail"] == refused
    assert job["status"] == "failed", job
    assert (job["error"], job["rows_done"]) == (refused, 0)
