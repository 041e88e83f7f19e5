"""Which job a free worker takes, and what a claim does, decided by the rows alone (both
databases): fairness between accounts, the per-account running cap, deactivated owners."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.db.tables import BatchJob, User
from modelyard.db.types import utcnow, uuid7
from modelyard.jobs import service
from modelyard.jobs.queue import InProcessJobs
from modelyard.state import AppState
from tests.support.factories import Account, make_version

LEASE = timedelta(minutes=5)


@pytest.fixture
async def state(app: FastAPI) -> AppState:
    """The app's state, its in-process worker stopped: the tests claim jobs themselves."""
    state: AppState = app.state.modelyard
    assert isinstance(state.batch_jobs, InProcessJobs)
    await state.batch_jobs.aclose()
    return state


@pytest.fixture
async def db(state: AppState) -> AsyncIterator[AsyncSession]:
    async with state.sessions() as db:
        yield db


@pytest.fixture
async def alice(client: httpx.AsyncClient, user: Account, iris_skops: Path) -> dict[str, Any]:
    """Alice's version of iris, with her id as `owner_id`."""
    return {**await make_version(client, user, iris_skops), "owner_id": user.id}


@pytest.fixture
async def bob(client: httpx.AsyncClient, other_user: Account, iris_skops: Path) -> dict[str, Any]:
    """Bob's version of iris, with his id as `owner_id`."""
    return {**await make_version(client, other_user, iris_skops), "owner_id": other_user.id}


async def add_job(
    db: AsyncSession,
    version: dict[str, Any],
    *,
    minutes_ago: float,
    status: str = "queued",
    started_minutes_ago: float | None = None,
    lease_minutes: float | None = None,
) -> uuid.UUID:
    """Insert a job of `version`'s owner, created `minutes_ago`; running ones hold a lease that
    ends `lease_minutes` from now (negative: lapsed)."""
    now = utcnow()
    job = BatchJob(
        id=uuid7(),
        owner_id=uuid.UUID(version["owner_id"]),
        model_id=uuid.UUID(version["model_id"]),
        model_name=version["model_name"],
        version_id=uuid.UUID(version["id"]),
        version=version["version"],
        input_path="in.csv",
        output_path="out.csv",
        format="csv",
        status=status,
        cancel_requested=False,
        rows_done=0,
        parts_done=0,
        inference_time_ms=0.0,
        attempts=0 if started_minutes_ago is None else 1,
        worker_token="another-worker" if status == "running" else None,
        lease_until=None if lease_minutes is None else now + timedelta(minutes=lease_minutes),
        created_at=now - timedelta(minutes=minutes_ago),
        started_at=(
            None if started_minutes_ago is None else now - timedelta(minutes=started_minutes_ago)
        ),
        finished_at=now if status in ("succeeded", "failed", "cancelled") else None,
    )
    db.add(job)
    await db.commit()
    return job.id


async def deactivate(db: AsyncSession, version: dict[str, Any]) -> None:
    await db.execute(
        update(User).where(User.id == uuid.UUID(version["owner_id"])).values(is_active=False)
    )
    await db.commit()


async def test_without_history_the_oldest_job_goes_first(
    db: AsyncSession, alice: dict[str, Any], bob: dict[str, Any]
) -> None:
    first = await add_job(db, alice, minutes_ago=3)
    await add_job(db, bob, minutes_ago=2)
    await add_job(db, alice, minutes_ago=1)

    assert await service.fairest_job_id(db, max_running=2) == first


async def test_an_account_just_served_waits_behind_one_that_was_not(
    db: AsyncSession, alice: dict[str, Any], bob: dict[str, Any]
) -> None:
    # Alice's flood came first, and her first job has just run.
    await add_job(db, alice, minutes_ago=10, status="succeeded", started_minutes_ago=1)
    for minutes in (9, 8, 7):
        await add_job(db, alice, minutes_ago=minutes)
    bobs = await add_job(db, bob, minutes_ago=2)

    assert await service.fairest_job_id(db, max_running=2) == bobs


async def test_the_account_with_fewer_running_jobs_goes_first(
    db: AsyncSession, alice: dict[str, Any], bob: dict[str, Any]
) -> None:
    # Bob was served more recently, but Alice has a job running now.
    await add_job(
        db, alice, minutes_ago=20, status="running", started_minutes_ago=15, lease_minutes=5
    )
    await add_job(db, alice, minutes_ago=10)
    await add_job(db, bob, minutes_ago=5, status="succeeded", started_minutes_ago=1)
    bobs = await add_job(db, bob, minutes_ago=2)

    assert await service.fairest_job_id(db, max_running=2) == bobs


async def test_an_account_at_its_running_cap_gets_no_more_jobs(
    db: AsyncSession, alice: dict[str, Any]
) -> None:
    for minutes in (10, 9):
        await add_job(
            db, alice, minutes_ago=minutes, status="running", started_minutes_ago=1, lease_minutes=5
        )
    waiting = await add_job(db, alice, minutes_ago=8)

    assert await service.fairest_job_id(db, max_running=2) is None
    assert await service.fairest_job_id(db, max_running=3) == waiting


async def test_a_job_whose_lease_lapsed_is_resumed_and_not_counted_as_running(
    db: AsyncSession, alice: dict[str, Any]
) -> None:
    abandoned = await add_job(
        db, alice, minutes_ago=10, status="running", started_minutes_ago=9, lease_minutes=-1
    )
    await add_job(db, alice, minutes_ago=8)

    assert await service.fairest_job_id(db, max_running=1) == abandoned


async def test_a_claim_past_the_accounts_running_cap_takes_nothing(
    db: AsyncSession, alice: dict[str, Any]
) -> None:
    await add_job(
        db, alice, minutes_ago=10, status="running", started_minutes_ago=1, lease_minutes=5
    )
    waiting = await add_job(db, alice, minutes_ago=8)

    refused = await service.claim(db, waiting, token="t1", lease=LEASE, max_running=1)
    taken = await service.claim(db, waiting, token="t2", lease=LEASE, max_running=2)

    assert refused is None
    assert taken is not None
    assert (taken.status, taken.worker_token) == ("running", "t2")


async def test_a_deactivated_accounts_jobs_are_picked_first_and_claimed_to_cancel(
    db: AsyncSession, alice: dict[str, Any], bob: dict[str, Any]
) -> None:
    await add_job(db, bob, minutes_ago=10)
    alices = await add_job(db, alice, minutes_ago=1)
    await deactivate(db, alice)

    picked = await service.fairest_job_id(db, max_running=2)
    claimed = await service.claim(db, alices, token="t", lease=LEASE, max_running=2)

    assert picked == alices
    assert claimed is not None
    assert claimed.cancel_requested is True


async def test_progress_of_a_deactivated_accounts_job_asks_it_to_cancel(
    db: AsyncSession, alice: dict[str, Any]
) -> None:
    job_id = await add_job(db, alice, minutes_ago=1)
    assert await service.claim(db, job_id, token="t", lease=LEASE) is not None
    active = await service.record_progress(
        db, job_id, token="t", rows_done=10, parts_done=1, inference_ms=1.0, lease=LEASE
    )
    await deactivate(db, alice)

    deactivated = await service.record_progress(
        db, job_id, token="t", rows_done=20, parts_done=2, inference_ms=1.0, lease=LEASE
    )

    assert (active, deactivated) == (False, True)
    job = await db.get(BatchJob, job_id, populate_existing=True)
    assert job is not None
    assert (job.cancel_requested, job.rows_done) == (True, 20)
