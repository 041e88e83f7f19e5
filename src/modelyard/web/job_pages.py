"""Dashboard pages of batch prediction jobs: the list, with live progress, and cancelling."""

from __future__ import annotations

import uuid
from pathlib import PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from modelyard.artifacts.http import object_response
from modelyard.auth.service import Caller
from modelyard.db.deps import SessionDep
from modelyard.files import service as files_service
from modelyard.jobs import service as jobs_service
from modelyard.jobs.schemas import JobStatus
from modelyard.schemas import PageParams
from modelyard.web.http import FormDep, UserPage, WebRoute, redirect, render

router = APIRouter(route_class=WebRoute, include_in_schema=False)

PAGE_SIZE = 25
Offset = Annotated[int, Query(ge=0, le=2**31)]


@router.get("/jobs")
async def jobs(page: UserPage, db: SessionDep, status: str = "", offset: Offset = 0) -> Response:
    """The signed-in user's batch jobs, newest first; running ones move live (app.js)."""
    chosen = JobStatus(status) if status in {s.value for s in JobStatus} else None
    rows, total = await jobs_service.list_jobs(
        db,
        Caller(page.signed_in, None),
        page=PageParams(limit=PAGE_SIZE, offset=offset),
        status=chosen,
    )
    return render(
        page,
        "jobs.html",
        jobs=rows,
        statuses=list(JobStatus),
        status=chosen.value if chosen else "",
        total=total,
        offset=offset,
        limit=PAGE_SIZE,
        query={"status": chosen.value} if chosen else {},
    )


@router.get("/jobs/{job_id}/output")
async def output(job_id: uuid.UUID, page: UserPage, db: SessionDep, request: Request) -> Response:
    """Download a job's output file (what is at its output path now, like the files API)."""
    job = await jobs_service.get_job(db, Caller(page.signed_in, None), job_id)
    path = job.output_path
    await db.close()
    stream = await files_service.open_file(page.state.store, owner_id=page.signed_in.id, path=path)
    return object_response(stream, filename=PurePosixPath(path).name, etag=None, request=request)


@router.post("/jobs/{job_id}/cancel")
async def cancel(job_id: uuid.UUID, page: UserPage, form: FormDep, db: SessionDep) -> Response:
    caller = Caller(page.signed_in, None)
    job = await jobs_service.get_job(db, caller, job_id)
    await jobs_service.cancel_job(db, caller, job, events=page.state.events)
    return redirect("/jobs")
