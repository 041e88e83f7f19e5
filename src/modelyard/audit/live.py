"""`GET /api/v1/events`: what happens to the caller's account and models, live (Server-Sent
Events).

The stream is the tail of the audit log as far as the caller may see it. Every replica appends to
the same log, so a client hears every replica's changes, in order, and a client that reconnects
with `Last-Event-ID` (browsers' EventSource does it by itself) misses none. A row appended by
this process wakes its streams at once; other replicas' rows are seen within `POLL_SECONDS`.

Between those rows go `batch_job.progress` messages: the caller's running jobs, read from the
jobs table at each poll and sent when their row count moved. They carry no `id` (a reconnecting
client resumes the log, and hears each running job's progress again at once), and are not in
the audit log: a job of a million rows commits a hundred chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import Header, Query
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard import context
from modelyard.audit import service
from modelyard.audit.router import AuditEventRead, sees_everything
from modelyard.auth.deps import CallerDep
from modelyard.auth.service import Caller
from modelyard.db.deps import SessionDep
from modelyard.db.tables import AuditEvent, BatchJob
from modelyard.jobs import service as jobs_service
from modelyard.jobs.schemas import BatchJobProgress
from modelyard.routing import make_router
from modelyard.state import AppState, StateDep

router = make_router(prefix="/api/v1/events", tags=["audit"])

POLL_SECONDS = 1.0
HEARTBEAT_SECONDS = 15.0
# A stream ends after this long (the client reconnects where it left off): a revoked credential
# stops streaming within it, and no stream outlives its credential.
MAX_STREAM_SECONDS = 300.0
BATCH = 100
RETRY_MS = 2_000
PROGRESS_EVENT = "batch_job.progress"
# Running jobs whose progress one stream follows.
MAX_JOBS = 100


def frame(row: AuditEvent) -> bytes:
    """Render one row as an SSE message: `id` its number, `event` its action."""
    data = AuditEventRead.model_validate(row).model_dump(mode="json")
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        row.seq,
        row.action.encode(),
        orjson.dumps(data),
    )


def progress_frame(job: BatchJob) -> bytes:
    """Render a running job's progress as an SSE message (no `id`: not an audit row)."""
    data = BatchJobProgress.model_validate(job).model_dump(mode="json")
    return b"event: %s\ndata: %s\n\n" % (PROGRESS_EVENT.encode(), orjson.dumps(data))


class JobProgress:
    """Follows the running jobs a stream may see; says which moved since the last look."""

    def __init__(self, caller: Caller, *, everything: bool) -> None:
        self.caller = caller
        self.everything = everything
        self.seen: dict[uuid.UUID, tuple[int, int | None]] = {}

    async def moved(self, db: AsyncSession) -> list[BatchJob]:
        """Return the running jobs first seen, or whose counts changed, since the last call."""
        jobs = await jobs_service.running_jobs(
            db, self.caller, everything=self.everything, limit=MAX_JOBS
        )
        before, self.seen = self.seen, {job.id: (job.rows_done, job.rows_total) for job in jobs}
        return [job for job in jobs if before.get(job.id) != self.seen[job.id]]


def response(
    state: AppState, caller: Caller, filters: service.AuditFilter, after: int
) -> StreamingResponse:
    """The event stream of `caller` from after row `after`, as a response."""
    return StreamingResponse(
        stream(state, caller, filters, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "an event stream: one message per audit row, `id` its `seq`; and "
            "`batch_job.progress` messages (no `id`) while the caller's jobs run",
            "content": {"text/event-stream": {}},
        }
    },
)
async def stream_events(
    caller: CallerDep,
    db: SessionDep,
    state: StateDep,
    last_event_id: Annotated[
        str | None,
        Header(pattern=r"^[0-9]{1,18}$", description="resume after this event (EventSource)"),
    ] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=10**18, description="start after this `seq` (0: from the first row)"),
    ] = None,
    action: Annotated[
        str | None,
        Query(max_length=64, description="one action, or every action of a kind (`model.`)"),
    ] = None,
) -> StreamingResponse:
    """Stream registry changes, sign-ins, key changes and everything else the audit log records
    that concerns the caller (admins: everything), as Server-Sent Events, and the progress of
    the caller's running batch jobs (`batch_job.progress`, when their row count moves).

    Starts with what happens from now on, or after `Last-Event-ID` / `after`. A comment line
    every 15 s keeps proxies from closing it; the server ends it after 5 minutes, and the client
    reconnects with `Last-Event-ID`.
    """
    start = after if after is not None else int(last_event_id) if last_event_id else None
    if start is None:
        start = await service.head(db)
    # A stream lasts: the request's connection goes back to the pool now.
    await db.close()
    return response(state, caller, service.AuditFilter(action=action), start)


async def stream(
    state: AppState, caller: Caller, filters: service.AuditFilter, after: int
) -> AsyncGenerator[bytes, None]:
    everything = sees_everything(caller)
    audit_log = state.audit_log
    ends = time.monotonic() + MAX_STREAM_SECONDS
    if caller.valid_until is not None:
        left = (caller.valid_until - datetime.now(UTC)).total_seconds()
        ends = min(ends, time.monotonic() + max(left, 0.0))
    progress = (
        JobProgress(caller, everything=everything)
        if filters.selects_action(PROGRESS_EVENT)
        else None
    )
    quiet_since = time.monotonic()
    yield b"retry: %d\n\n" % RETRY_MS
    while time.monotonic() < ends and not context.draining.is_set() and not state.shutting_down:
        async with state.sessions() as db:
            rows = await service.events_after(
                db, caller.user, filters, everything=everything, after=after, limit=BATCH
            )
            moved = await progress.moved(db) if progress is not None else []
        for row in rows:
            yield frame(row)
            after = row.seq
        for job in moved:
            yield progress_frame(job)
        if moved:
            quiet_since = time.monotonic()
        if rows:
            quiet_since = time.monotonic()
            if len(rows) == BATCH:
                continue
        elif time.monotonic() - quiet_since >= HEARTBEAT_SECONDS:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(POLL_SECONDS):
                await audit_log.appended()
