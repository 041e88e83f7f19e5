"""Use cases of batch jobs: create, list, show, cancel; and the row operations of the workers
that run them (claim, lease renewal, progress, finish).

A job's row is the truth in both worker modes. A worker *claims* a job with one conditional
UPDATE (queued, or running with a lapsed lease), so two processes never run one job; it holds
the job by renewing the lease, and every later write of its run is conditional on still holding
it (its `worker_token`): a worker that lost the job (it stalled past its lease and another took
over) can no longer move it.

Fairness between accounts is decided here too, from the rows: an account has at most
`max_active` queued and running jobs (429 past it), at most `max_running` of them run at once,
and whatever a worker is woken for, it runs the *fairest* runnable job (`fairest_job_id`): the
account with the fewest running jobs, then the one whose last job started longest ago, then the
oldest job. Another account's job so waits behind the ones already running, not behind a
flood. A job whose owner has been deactivated is stopped by the same rows: claiming it, or
recording its progress, asks it to cancel (auth, below jobs, knows nothing of them).
"""

from __future__ import annotations

import importlib.util
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, Select, and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from modelyard.artifacts.store import ArtifactStore
from modelyard.auth.scopes import Scope
from modelyard.auth.service import Caller
from modelyard.changes.events import Action, Events
from modelyard.db.sql import rowcount
from modelyard.db.tables import BatchJob, User
from modelyard.db.types import utcnow, uuid7
from modelyard.errors import Conflict, NotFound, RateLimited, Unprocessable
from modelyard.files.service import FileNotFound, file_key
from modelyard.jobs.schemas import FINISHED, BatchJobCreate, JobFormat, JobStatus
from modelyard.predictions.targets import resolve_target
from modelyard.schemas import PageParams


class JobQueue(ABC):
    """Hands created jobs to workers (`modelyard.jobs.queue` has the implementations, which run
    this module's functions: the interface lives here, so the service never imports them)."""

    @abstractmethod
    async def submit(self, job_id: uuid.UUID) -> None:
        """Make the job reach a worker soon; never raises (the sweeps catch what is missed)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop what runs in the background and release connections."""


class BatchJobNotFound(NotFound):
    type = "batch-job-not-found"

    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(f"batch job '{job_id}' not found")


class JobFinished(Conflict):
    type = "batch-job-finished"


class TooManyJobs(RateLimited):
    type = "too-many-batch-jobs"


class OutputNotAFile(Unprocessable):
    type = "output-path-not-a-file"


# What an account at its cap of queued and running jobs is told to wait: about a small job's
# run (the table knows no job's end in advance).
TOO_MANY_JOBS_RETRY_AFTER_SECONDS = 30
# The jobs that count against an account's cap.
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


def has_parquet() -> bool:
    """Tell whether this server can read Parquet (pyarrow is installed)."""
    return importlib.util.find_spec("pyarrow") is not None


def owned_jobs(user: User, models: frozenset[str] | None = None) -> Select[BatchJob]:
    """Select the jobs `user` owns (on `models` only, for an API key limited to them): the one
    place jobs are filtered by owner."""
    query = select(BatchJob).where(BatchJob.owner_id == user.id)
    if models is not None:
        query = query.where(BatchJob.model_name.in_(models))
    return query


def acts_as_admin(caller: Caller) -> bool:
    """Tell whether the caller acts with an admin's full rights: an admin signed in, or with an
    admin key not limited to models (a key limited to `iris` is limited to its own `iris`)."""
    return caller.user.is_admin and caller.allows(Scope.ADMIN, model=None)


async def get_job(
    db: AsyncSession, caller: Caller, job_id: uuid.UUID, *, any_owner: bool = False
) -> BatchJob:
    """Return one of the caller's jobs; with `any_owner`, anyone's to an admin (`acts_as_admin`).

    Raises:
        BatchJobNotFound: no such job, another user's, or (for a key limited to models) one on
            a model the key may not use.
    """
    if any_owner and acts_as_admin(caller):
        query = select(BatchJob)
    else:
        query = owned_jobs(caller.user, caller.models)
    job = await db.scalar(query.where(BatchJob.id == job_id))
    if job is None:
        raise BatchJobNotFound(job_id)
    return job


async def list_jobs(
    db: AsyncSession, caller: Caller, *, page: PageParams, status: JobStatus | None = None
) -> tuple[Sequence[BatchJob], int]:
    """Return one page of the caller's jobs, newest first, and how many there are."""
    query = owned_jobs(caller.user, caller.models)
    if status is not None:
        query = query.where(BatchJob.status == status)
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(
        query.order_by(BatchJob.created_at.desc(), BatchJob.id.desc())
        .limit(page.limit)
        .offset(page.offset)
    )
    return list(rows), total or 0


async def running_jobs(
    db: AsyncSession, caller: Caller, *, everything: bool, limit: int
) -> Sequence[BatchJob]:
    """Return up to `limit` running jobs, oldest first: the caller's (on its key's models), or
    with `everything` every user's (an admin's live events)."""
    query = select(BatchJob) if everything else owned_jobs(caller.user, caller.models)
    rows = await db.scalars(
        query.where(BatchJob.status == JobStatus.RUNNING)
        .order_by(BatchJob.created_at, BatchJob.id)
        .limit(limit)
    )
    return rows.all()


async def create_job(
    db: AsyncSession,
    caller: Caller,
    body: BatchJobCreate,
    *,
    store: ArtifactStore,
    queue: JobQueue,
    events: Events,
    max_active: int,
) -> BatchJob:
    """Resolve the model version, check the input file exists and the output path can be a
    file, insert a queued job and hand it to the workers (after the commit: a worker never looks
    for a job not there yet).

    Raises:
        MissingScope, OutsideModelLimit: the caller's API key may not read and write files (a
            key limited to models never may), or may not predict with the model.
        Unprocessable: Parquet asked for, and this server cannot read it.
        ModelNotFound, VersionNotFound, AliasNotFound, NoServableVersion: nothing to serve.
        NotServable: the model or the chosen version is archived.
        FileNotFound: the caller has no file at `input_path`.
        OutputNotAFile: `output_path` is a folder, or inside a file.
        TooManyJobs: the caller has `max_active` queued and running jobs already.
    """
    # A job reads a file of the caller's and writes another: it needs the rights the files
    # routes need, and a key limited to models (refused every files route) may not name files
    # here either. Checked before anything is looked up, so that whether a file exists is never
    # told to a caller who may not read it.
    caller.require(Scope.READ, model=None)
    caller.require(Scope.WRITE, model=None)
    if body.format == JobFormat.PARQUET and not has_parquet():
        raise Unprocessable(
            "Parquet input needs the pyarrow package, which this server does not have; "
            "send CSV (format 'csv')"
        )
    version = body.version if isinstance(body.version, int) else None
    alias = body.version if isinstance(body.version, str) else None
    target = await resolve_target(db, caller.user, body.model, version=version, alias=alias)
    # The model is named in the body: a key limited to models is checked here.
    caller.require(Scope.PREDICT, model=target.model_name)
    if await store.stat(file_key(caller.user.id, body.input_path)) is None:
        raise FileNotFound(body.input_path)
    await _check_output_path(store, caller.user.id, body.output_path)
    job = BatchJob(
        id=uuid7(),
        owner_id=caller.user.id,
        api_key_id=caller.api_key_id,
        model_id=target.model_id,
        model_name=target.model_name,
        version_id=target.version_id,
        version=target.version,
        input_path=body.input_path,
        output_path=body.output_path,
        format=body.format,
        status=JobStatus.QUEUED,
        cancel_requested=False,
        rows_done=0,
        parts_done=0,
        inference_time_ms=0.0,
        attempts=0,
    )
    # Insert, then count: on SQLite the insert takes the database's one write lock before the
    # count reads, on PostgreSQL the owner's row lock queues the account's creations; either
    # way two creations at once cannot both pass the cap.
    await db.execute(
        select(User.id).where(User.id == caller.user.id).with_for_update(key_share=True)
    )
    db.add(job)
    await db.flush()
    active = await db.scalar(
        select(func.count())
        .select_from(BatchJob)
        .where(BatchJob.owner_id == caller.user.id, BatchJob.status.in_(ACTIVE))
    )
    if (active or 0) > max_active:
        await db.rollback()
        raise TooManyJobs(
            f"you have {max_active} queued and running batch jobs, the most an account may "
            "have; start this one once one of them has ended",
            retry_after_seconds=TOO_MANY_JOBS_RETRY_AFTER_SECONDS,
        )
    await db.commit()
    await queue.submit(job.id)
    await events.record(
        action(
            "batch_job.created",
            job,
            input_path=job.input_path,
            output_path=job.output_path,
            format=job.format,
            version=job.version,
        )
    )
    return job


async def cancel_job(
    db: AsyncSession, caller: Caller, job: BatchJob, *, events: Events
) -> BatchJob:
    """Cancel a job: a queued one at once, a running one at its next chunk.

    Cancelling a cancelled job again changes nothing. An admin may cancel anyone's job (found
    with `get_job(..., any_owner=True)`).

    Raises:
        MissingScope, OutsideModelLimit: the caller's API key may not predict with the model.
        JobFinished: the job has succeeded or failed already.
    """
    caller.require(Scope.PREDICT, model=job.model_name)
    job_id = job.id
    now = utcnow()
    # Queued: nobody runs it yet, it ends here. (A worker may claim it meanwhile: the condition
    # then fails, and the running job is asked to stop below.)
    queued = await db.execute(
        update(BatchJob)
        .where(BatchJob.id == job_id, BatchJob.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now, updated_at=now)
    )
    if not rowcount(queued):
        await db.execute(
            update(BatchJob)
            .where(BatchJob.id == job_id, BatchJob.status == JobStatus.RUNNING)
            .values(cancel_requested=True, updated_at=now)
        )
    await db.commit()
    await db.refresh(job)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise JobFinished(f"batch job '{job_id}' has {job.status} already")
    await events.record(action("batch_job.cancelled", job, status=job.status))
    return job


def action(name: str, job: BatchJob, *, outcome: str = "success", **details: Any) -> Action:
    """Return the audit action `name` about `job`."""
    return Action(
        name=name,
        target_type="batch_job",
        target_id=str(job.id),
        owner_id=job.owner_id,
        model_id=job.model_id,
        outcome=outcome,
        details=details,
    )


async def _check_output_path(store: ArtifactStore, owner_id: uuid.UUID, path: str) -> None:
    """Refuse an output path the output could never be stored at: a folder (objects under
    `path/`), or a path inside a file. Found now, not once every row has been scored.

    Raises:
        OutputNotAFile: either.
    """
    key = file_key(owner_id, path)
    listing = store.list(key + "/")
    try:
        is_folder = await anext(listing, None) is not None
    finally:
        if isinstance(listing, AsyncGenerator):
            await listing.aclose()
    if is_folder:
        raise OutputNotAFile(f"output_path {path!r} is a folder; name a file")
    segments = path.split("/")
    for end in range(1, len(segments)):
        folder = "/".join(segments[:end])
        if await store.stat(file_key(owner_id, folder)) is not None:
            raise OutputNotAFile(f"output_path {path!r} is inside {folder!r}, which is a file")


# --- what workers do to the rows --------------------------------------------------------------


async def abandoned_jobs(db: AsyncSession, *, limit: int) -> list[tuple[uuid.UUID, int]]:
    """Return (id, attempts) of running jobs whose lease has lapsed, oldest first."""
    rows = await db.execute(
        select(BatchJob.id, BatchJob.attempts)
        .where(BatchJob.status == JobStatus.RUNNING, BatchJob.lease_until < utcnow())
        .order_by(BatchJob.created_at, BatchJob.id)
        .limit(limit)
    )
    return [(row[0], row[1]) for row in rows]


async def queued_job_ids(db: AsyncSession, *, limit: int) -> list[uuid.UUID]:
    """Return queued jobs, oldest first."""
    rows = await db.scalars(
        select(BatchJob.id)
        .where(BatchJob.status == JobStatus.QUEUED)
        .order_by(BatchJob.created_at, BatchJob.id)
        .limit(limit)
    )
    return list(rows)


def _claimable() -> Any:
    return or_(
        BatchJob.status == JobStatus.QUEUED,
        and_(BatchJob.status == JobStatus.RUNNING, BatchJob.lease_until < utcnow()),
    )


def _running_of_owner(now: datetime) -> ScalarSelect[int]:
    """Return how many jobs of the owner of the `BatchJob` row at hand hold a live lease."""
    other = aliased(BatchJob)
    return (
        select(func.count())
        .select_from(other)
        .where(
            other.owner_id == BatchJob.owner_id,
            other.status == JobStatus.RUNNING,
            other.lease_until >= now,
        )
        .scalar_subquery()
    )


def _owner_active() -> ColumnElement[bool]:
    """Whether the owner of the `BatchJob` row at hand is an active user."""
    return exists().where(User.id == BatchJob.owner_id, User.is_active.is_(True))


async def fairest_job_id(db: AsyncSession, *, max_running: int) -> uuid.UUID | None:
    """Return the job a free worker should claim, or None when none may start now.

    Claimable jobs (queued, or running with a lapsed lease) of accounts with fewer than
    `max_running` live ones; first those of deactivated accounts (claimed only to be
    cancelled), then the account with the fewest running, then the one whose last job started
    longest ago (never first), then the oldest job.
    """
    now = utcnow()
    other = aliased(BatchJob)
    running = _running_of_owner(now)
    last_started = (
        select(func.max(other.started_at))
        .where(other.owner_id == BatchJob.owner_id)
        .scalar_subquery()
    )
    return await db.scalar(
        select(BatchJob.id)
        .where(_claimable(), running < max_running)
        .order_by(
            _owner_active(),
            running,
            last_started.asc().nulls_first(),
            BatchJob.created_at,
            BatchJob.id,
        )
        .limit(1)
    )


async def claim(
    db: AsyncSession,
    job_id: uuid.UUID,
    *,
    token: str,
    lease: timedelta,
    max_running: int | None = None,
) -> BatchJob | None:
    """Take a job for the run `token`, if it is queued or its lease has lapsed, and its owner
    has fewer than `max_running` jobs running (None: no cap); return it, or None when another
    run holds it, it has finished, or its owner is at the cap.

    A job whose owner is no longer active is taken with `cancel_requested` set: its run ends
    it at once.
    """
    now = utcnow()
    condition = [BatchJob.id == job_id, _claimable()]
    if max_running is not None:
        condition.append(_running_of_owner(now) < max_running)
        # PostgreSQL: claims of one account's jobs queue on the owner's row, so two workers
        # cannot both see it under its cap (SQLite: the UPDATE holds the one write lock).
        await db.execute(
            select(User.id)
            .where(
                User.id == select(BatchJob.owner_id).where(BatchJob.id == job_id).scalar_subquery()
            )
            .with_for_update(key_share=True)
        )
    result = await db.execute(
        update(BatchJob)
        .where(*condition)
        .values(
            status=JobStatus.RUNNING,
            worker_token=token,
            lease_until=now + lease,
            attempts=BatchJob.attempts + 1,
            started_at=func.coalesce(BatchJob.started_at, now),
            updated_at=now,
            cancel_requested=or_(BatchJob.cancel_requested, ~_owner_active()),
        )
    )
    await db.commit()
    if not rowcount(result):
        return None
    return await db.scalar(
        select(BatchJob)
        .where(BatchJob.id == job_id, BatchJob.worker_token == token)
        .execution_options(populate_existing=True)
    )


async def job_exists(db: AsyncSession, job_id: uuid.UUID) -> bool:
    """Tell whether the job's row is still there (an erasure takes it with its owner)."""
    return await db.scalar(select(BatchJob.id).where(BatchJob.id == job_id)) is not None


async def renew(db: AsyncSession, job_id: uuid.UUID, *, token: str, lease: timedelta) -> bool:
    """Extend the lease of the run `token`; False when it no longer holds the job."""
    result = await db.execute(
        update(BatchJob)
        .where(
            BatchJob.id == job_id,
            BatchJob.worker_token == token,
            BatchJob.status == JobStatus.RUNNING,
        )
        .values(lease_until=utcnow() + lease)
    )
    await db.commit()
    return rowcount(result) == 1


async def set_total(db: AsyncSession, job_id: uuid.UUID, *, token: str, rows_total: int) -> None:
    """Record how many rows the input holds."""
    await db.execute(
        update(BatchJob)
        .where(BatchJob.id == job_id, BatchJob.worker_token == token)
        .values(rows_total=rows_total, updated_at=utcnow())
    )
    await db.commit()


async def record_progress(
    db: AsyncSession,
    job_id: uuid.UUID,
    *,
    token: str,
    rows_done: int,
    parts_done: int,
    inference_ms: float,
    lease: timedelta,
) -> bool | None:
    """Commit one stored chunk: rows and parts done move together (what a resumed run trusts).

    Returns whether a cancellation was asked for, or None when the run no longer holds the job
    (another run took it over, or it is gone with its owner's account). A job whose owner is
    no longer active is asked to cancel here: deactivation stops it at its next chunk.
    """
    now = utcnow()
    result = await db.execute(
        update(BatchJob)
        .where(
            BatchJob.id == job_id,
            BatchJob.worker_token == token,
            BatchJob.status == JobStatus.RUNNING,
        )
        .values(
            rows_done=rows_done,
            parts_done=parts_done,
            inference_time_ms=BatchJob.inference_time_ms + inference_ms,
            lease_until=now + lease,
            updated_at=now,
            cancel_requested=or_(BatchJob.cancel_requested, ~_owner_active()),
        )
        .returning(BatchJob.cancel_requested)
    )
    cancel_requested = result.scalar_one_or_none()
    await db.commit()
    return cancel_requested


async def finish(
    db: AsyncSession,
    job_id: uuid.UUID,
    *,
    token: str,
    status: JobStatus,
    error: str | None = None,
    rows_total: int | None = None,
) -> BatchJob | None:
    """End the run `token` with `status`; return the job, or None when the run had lost it."""
    assert status in FINISHED  # noqa: S101 - callers pass a final status
    now = utcnow()
    values: dict[str, Any] = {
        "status": status,
        "error": error,
        "finished_at": now,
        "updated_at": now,
        "worker_token": None,
        "lease_until": None,
    }
    if rows_total is not None:
        values["rows_total"] = rows_total
    result = await db.execute(
        update(BatchJob)
        .where(
            BatchJob.id == job_id,
            BatchJob.worker_token == token,
            BatchJob.status == JobStatus.RUNNING,
        )
        .values(**values)
    )
    await db.commit()
    if not rowcount(result):
        return None
    return await db.scalar(
        select(BatchJob).where(BatchJob.id == job_id).execution_options(populate_existing=True)
    )
