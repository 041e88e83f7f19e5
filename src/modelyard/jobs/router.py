"""Routes of `/api/v1/batch-jobs`: score a file of the caller's in the background."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Query, status

from modelyard.artifacts.deps import StoreDep
from modelyard.auth.deps import CallerDep
from modelyard.changes.deps import EventsDep
from modelyard.db.deps import SessionDep
from modelyard.db.tables import BatchJob
from modelyard.deps import SettingsDep
from modelyard.edge.routing import make_router
from modelyard.jobs import service
from modelyard.jobs.deps import JobQueueDep
from modelyard.jobs.schemas import BATCH_JOBS_PATH, BatchJobCreate, BatchJobRead, JobStatus
from modelyard.schemas import Page, PageDep, make_page

router = make_router(prefix=BATCH_JOBS_PATH, tags=["batch jobs"])


async def owned_job(job_id: uuid.UUID, caller: CallerDep, db: SessionDep) -> BatchJob:
    """Return the caller's job `{job_id}`, or anyone's to an admin (404 for anyone else)."""
    return await service.get_job(db, caller, job_id, any_owner=True)


OwnedJob = Annotated[BatchJob, Depends(owned_job)]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchJobRead,
    responses={
        403: {"description": "the API key may not predict, read and write files"},
        404: {"description": "no such model, version, alias or input file"},
        409: {"description": "the model or version is archived"},
        429: {"description": "the account has its most queued and running jobs already"},
    },
)
async def create_batch_job(
    body: BatchJobCreate,
    caller: CallerDep,
    db: SessionDep,
    events: EventsDep,
    settings: SettingsDep,
    store: StoreDep,
    jobs: JobQueueDep,
) -> BatchJob:
    """Score a CSV file of the caller's with a model version, in the background.

    The version is resolved now (a later promotion does not change the job). The answer is the
    queued job; poll it (`links.self`) for progress, and download `links.output` once it has
    succeeded. Needs the `predict` scope, and `read` and `write` (the job reads and writes
    files); a key limited to models may not start jobs (it may not name files).
    """
    assert jobs is not None  # noqa: S101 - set up with the API routes
    return await service.create_job(
        db,
        caller,
        body,
        store=store,
        queue=jobs,
        events=events,
        max_active=settings.batch_job_max_active_per_account,
    )


@router.get("", response_model=Page[BatchJobRead])
async def list_batch_jobs(
    caller: CallerDep,
    db: SessionDep,
    page: PageDep,
    status: Annotated[JobStatus | None, Query()] = None,
) -> Page[BatchJobRead]:
    """List the caller's batch jobs, newest first (only those with `status`, if given)."""
    rows, total = await service.list_jobs(db, caller, page=page, status=status)
    return make_page(BatchJobRead, rows, total, page)


@router.get("/{job_id}", response_model=BatchJobRead)
async def get_batch_job(job: OwnedJob) -> BatchJob:
    """Show a batch job: status, rows done and in all, error, times (admins: anyone's)."""
    return job


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchJobRead,
    responses={409: {"description": "the job has succeeded or failed already"}},
)
async def cancel_batch_job(
    job: OwnedJob, caller: CallerDep, db: SessionDep, events: EventsDep
) -> BatchJob:
    """Cancel a batch job: a queued one at once; a running one stops after its current chunk
    (`cancel_requested` until then). No output file is written. Admins may cancel anyone's."""
    return await service.cancel_job(db, caller, job, events=events)
