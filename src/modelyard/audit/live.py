"""`GET /api/v1/events`: what happens to the caller's account and models, live (Server-Sent
Events).

The stream is the tail of the audit log as far as the caller may see it. Every replica appends to
the same log, so a client hears every replica's changes, in order, and a client that reconnects
with `Last-Event-ID` (browsers' EventSource does it by itself) misses none. A row appended by
this process wakes the streams at once; other replicas' rows are seen within `POLL_SECONDS`.

Between those rows go `batch_job.progress` messages: the running jobs a stream may see, sent
when their row count moved. They carry no `id` (a reconnecting client resumes the log, and hears
each running job's progress again at once), and are not in the audit log: a job of a million
rows commits a hundred chunks.

One `LiveFeed` per process serves every open stream: one poller reads the new rows (and, while
a stream follows progress, the running jobs) once per poll for all streams together, and hands
each stream, in memory, what its caller may see. An account may hold only so many streams in a
process (`live_events_streams_per_account`), and nothing is polled while no stream is open.

A stream lasts only as long as the credential it was opened with: whenever the host's
credentials counter moves (a revocation, sign-out, password change, deactivation or change of
rights, announced through the events seam by this worker, another worker of the host or, with
Redis, another replica), the feed checks the credentials of its streams again and ends those
that no longer hold, within `CREDENTIAL_CHECK_SECONDS` and one query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Protocol

import orjson
from fastapi import Depends, Header, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import Receive, Scope, Send

from modelyard.audit import service
from modelyard.audit.router import AuditEventRead, sees_everything
from modelyard.audit.service import AuditFilter, AuditLog
from modelyard.auth.deps import CallerDep, TokensDep, api_key_scheme, bearer_scheme, credentials
from modelyard.auth.service import Caller
from modelyard.auth.tokens import TokenService
from modelyard.changes.epochs import Epoch, Epochs
from modelyard.db.deps import SessionDep
from modelyard.db.tables import ApiKey, AuditEvent, BatchJob, RefreshToken, User, WebSession
from modelyard.db.types import utcnow
from modelyard.deps import component
from modelyard.edge import context
from modelyard.edge.routing import make_router
from modelyard.errors import RateLimited, ServiceUnavailable, is_dependency_down
from modelyard.jobs.schemas import BatchJobProgress, JobStatus

log = logging.getLogger(__name__)

router = make_router(prefix="/api/v1/events", tags=["audit"])

POLL_SECONDS = 1.0
# How often the feed reads the host's credentials counter while streams are open (a memory
# read): a stream whose credential ended stops within this, plus one query.
CREDENTIAL_CHECK_SECONDS = 0.2
# Every stream's credential is checked again at least this often, counter or not: a change the
# counter missed (Redis unreachable, an edit made straight in the database) ends it by then.
CREDENTIAL_RECHECK_SECONDS = 30.0
HEARTBEAT_SECONDS = 15.0
# A stream ends after this long (the client reconnects where it left off, with its credential
# checked again as any request's).
MAX_STREAM_SECONDS = 300.0
BATCH = 100
# Rows the feed reads at a time for all streams (it reads again at once when the page was full).
FEED_BATCH = 500
RETRY_MS = 2_000
PROGRESS_EVENT = "batch_job.progress"
# Running jobs whose progress one stream follows, and that the feed reads for all streams.
MAX_JOBS = 100
MAX_RUNNING_JOBS = 1_000
# Messages waiting for one stream whose client does not read: past it the stream ends, and the
# client resumes with Last-Event-ID (it misses nothing); a stalled client holds no more memory.
MAX_QUEUED = 1_000
# Ids in one IN list of the credential check (far below SQLite's and PostgreSQL's limits).
CHECK_CHUNK = 500
STREAM_LIMIT_RETRY_AFTER_SECONDS = 5


class TooManyStreams(RateLimited):
    type = "too-many-event-streams"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this account already has {limit} event streams open; close one and retry",
            retry_after_seconds=STREAM_LIMIT_RETRY_AFTER_SECONDS,
        )


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


def selects(filters: AuditFilter, row: AuditEvent) -> bool:
    """Tell whether `filters` take `row`: what `AuditFilter.conditions` asks in SQL."""
    if not filters.selects_action(row.action):
        return False
    for wanted, value in (
        (filters.outcome, row.outcome),
        (filters.actor_user_id, row.actor_user_id),
        (filters.actor_api_key_id, row.actor_api_key_id),
        (filters.owner_id, row.owner_id),
        (filters.target_type, row.target_type),
        (filters.target_id, row.target_id),
        (filters.model_id, row.model_id),
    ):
        if wanted is not None and value != wanted:
            return False
    if filters.since is not None and row.at < filters.since:
        return False
    return filters.until is None or row.at < filters.until


@dataclass(frozen=True, slots=True)
class Credential:
    """What a stream's right rests on, checked again whenever credentials change.

    Always the account (active, with the admin rights it had); and the API key (active,
    unexpired), the session of an access token (not ended, under the same credentials
    version), or the dashboard session (not signed out or expired, same version) it came with.
    """

    user_id: uuid.UUID
    is_admin: bool
    api_key_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None  # an access token's session (its refresh family)
    web_session_id: uuid.UUID | None = None
    version: int | None = None  # the credentials version a token or dashboard session holds

    @classmethod
    def of_account(cls, user: User) -> Credential:
        """The credential of `user` as such: it holds while the account keeps its rights."""
        return cls(user.id, user.is_admin)

    @classmethod
    def of_web_session(cls, user: User, session: WebSession) -> Credential:
        """The credential of a dashboard session."""
        return cls(
            user.id,
            user.is_admin,
            web_session_id=session.id,
            version=session.credentials_version,
        )


@dataclass(frozen=True, slots=True)
class _Standing:
    """What the database says now of the credentials a check covers."""

    users: dict[uuid.UUID, tuple[bool, bool, int]]  # id -> (is_active, is_admin, version)
    keys: dict[uuid.UUID, tuple[bool, datetime | None]]  # id -> (is_active, expires_at)
    ended_sessions: set[uuid.UUID]
    web_sessions: dict[uuid.UUID, tuple[datetime | None, datetime]]  # (revoked_at, expires_at)

    def holds(self, credential: Credential, now: datetime) -> bool:
        user = self.users.get(credential.user_id)
        if user is None:
            return False
        is_active, is_admin, version = user
        if not is_active or is_admin != credential.is_admin:
            return False
        if credential.api_key_id is not None:
            key = self.keys.get(credential.api_key_id)
            if key is None or not key[0] or (key[1] is not None and key[1] <= now):
                return False
        if credential.session_id is not None and (
            credential.session_id in self.ended_sessions or version != credential.version
        ):
            return False
        if credential.web_session_id is not None:
            web = self.web_sessions.get(credential.web_session_id)
            if web is None or web[0] is not None or web[1] <= now:
                return False
            if version != credential.version:
                return False
        return True


def _chunks(ids: Iterable[uuid.UUID]) -> Iterable[list[uuid.UUID]]:
    unique = sorted(set(ids))
    for start in range(0, len(unique), CHECK_CHUNK):
        yield unique[start : start + CHECK_CHUNK]


async def _standing(db: AsyncSession, credentials: Sequence[Credential]) -> _Standing:
    """Read what the database says of `credentials`: a few indexed lookups for all of them."""
    standing = _Standing({}, {}, set(), {})
    for ids in _chunks(c.user_id for c in credentials):
        for user_id, is_active, is_admin, version in await db.execute(
            select(User.id, User.is_active, User.is_admin, User.credentials_version).where(
                User.id.in_(ids)
            )
        ):
            standing.users[user_id] = (is_active, is_admin, version)
    for ids in _chunks(c.api_key_id for c in credentials if c.api_key_id is not None):
        for key_id, is_active, expires_at in await db.execute(
            select(ApiKey.id, ApiKey.is_active, ApiKey.expires_at).where(ApiKey.id.in_(ids))
        ):
            standing.keys[key_id] = (is_active, expires_at)
    for ids in _chunks(c.session_id for c in credentials if c.session_id is not None):
        standing.ended_sessions.update(
            await db.scalars(
                select(RefreshToken.family_id)
                .where(RefreshToken.family_id.in_(ids), RefreshToken.revoked_at.is_not(None))
                .distinct()
            )
        )
    for ids in _chunks(c.web_session_id for c in credentials if c.web_session_id is not None):
        for session_id, revoked_at, expires_at in await db.execute(
            select(WebSession.id, WebSession.revoked_at, WebSession.expires_at).where(
                WebSession.id.in_(ids)
            )
        ):
            standing.web_sessions[session_id] = (revoked_at, expires_at)
    return standing


class Subscription:
    """One open stream: who watches, what they asked for, and the messages waiting for them."""

    def __init__(
        self,
        caller: Caller,
        credential: Credential,
        filters: AuditFilter,
        *,
        after: int,
        joined: int,
        valid_until: datetime | None,
    ) -> None:
        self.caller = caller
        self.credential = credential
        self.filters = filters
        self.everything = sees_everything(caller)
        # The newest row sent; rows up to `joined` come from the log itself, later ones from
        # the feed.
        self.after = after
        self.joined = joined
        self.valid_until = valid_until
        # Running jobs followed, and the counts last sent (None: progress not asked for).
        self.jobs: dict[uuid.UUID, tuple[int, int | None]] | None = (
            {} if filters.selects_action(PROGRESS_EVENT) else None
        )
        self.checked_epoch: int | None = None  # the credentials counter last checked under
        self.ended: str | None = None  # why the stream ended
        self._queue: deque[tuple[int | None, bytes]] = deque()
        self._ready = asyncio.Event()

    def sees(self, row: AuditEvent) -> bool:
        """Tell whether this stream carries `row`: what `service.events_after` would return."""
        user_id = self.caller.user.id
        if not self.everything and user_id not in (row.owner_id, row.actor_user_id):
            return False
        return selects(self.filters, row)

    def sees_job(self, job: BatchJob) -> bool:
        """Tell whether this stream follows `job`: the caller's own (on its key's models), or
        every job for a stream that sees everything."""
        if self.everything:
            return True
        models = self.caller.models
        return job.owner_id == self.caller.user.id and (models is None or job.model_name in models)

    def moved(self, running: Sequence[BatchJob]) -> list[BatchJob]:
        """Return the running jobs this stream follows that are new, or whose counts changed,
        since the last call (the first `MAX_JOBS` it may see, oldest first)."""
        if self.jobs is None:
            return []
        jobs = [job for job in running if self.sees_job(job)][:MAX_JOBS]
        before, self.jobs = self.jobs, {job.id: (job.rows_done, job.rows_total) for job in jobs}
        return [job for job in jobs if before.get(job.id) != self.jobs[job.id]]

    def push(self, seq: int | None, message: bytes) -> None:
        """Queue a message (`seq`: the audit row's number; None for progress)."""
        if self.ended is not None:
            return
        if len(self._queue) >= MAX_QUEUED:
            self.end("the client fell behind")
            return
        self._queue.append((seq, message))
        self._ready.set()

    def end(self, reason: str) -> None:
        """End the stream: it sends nothing more."""
        if self.ended is None:
            self.ended = reason
            self._queue.clear()
        self._ready.set()

    def next(self) -> bytes | None:
        """Return the next message to send, if one waits (rows sent already are skipped)."""
        while self._queue:
            seq, message = self._queue.popleft()
            if seq is None:
                return message
            if seq > self.after:
                self.after = seq
                return message
        self._ready.clear()
        return None

    async def wait(self, seconds: float) -> None:
        """Return when a message waits or the stream ended, or after `seconds`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._ready.wait()


class LiveFeed:
    """The event streams of one process, and the one poller that feeds them all."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        audit_log: AuditLog,
        epochs: Epochs,
        *,
        streams_per_account: int,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.sessions = sessions
        self.audit_log = audit_log
        self.epochs = epochs
        self.streams_per_account = streams_per_account
        self.poll_seconds = poll_seconds
        self.streams: set[Subscription] = set()
        self.per_account: Counter[uuid.UUID] = Counter()
        # The newest row handed to the streams (None while the feed is idle).
        self.cursor: int | None = None
        self.polls = 0  # rounds of reading the log, for all streams together
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._full_check_at = 0.0
        self._checks_retry_at = 0.0
        self.closed = False  # the server shuts down

    @property
    def running(self) -> bool:
        """Tell whether the poller runs (only while a stream is open)."""
        return self._task is not None

    async def open(
        self,
        caller: Caller,
        credential: Credential,
        filters: AuditFilter,
        *,
        after: int,
        valid_until: datetime | None,
    ) -> Subscription:
        """Open a stream of what `caller` may see after row `after`; close it with `close`.

        Raises:
            TooManyStreams: the account has `streams_per_account` streams open here.
        """
        if self.closed:
            raise ServiceUnavailable("the server is shutting down")
        account = caller.user.id
        limit = self.streams_per_account
        if limit and self.per_account[account] >= limit:
            raise TooManyStreams(limit)
        # Counted before the first await: streams opened together cannot all slip past.
        self.per_account[account] += 1
        try:
            # Idle: the feed starts from the log's head (one query, whoever comes first).
            while (joined := self.cursor) is None:
                async with self._starting:
                    if self.cursor is None:
                        async with self.sessions() as db:
                            head = await service.head(db)
                        self.cursor = head
        except BaseException:
            self._release(account)
            raise
        subscription = Subscription(
            caller, credential, filters, after=after, joined=joined, valid_until=valid_until
        )
        self.streams.add(subscription)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="live-feed")
        return subscription

    def close(self, subscription: Subscription, reason: str = "closed") -> None:
        """End a stream and give its place back (again: nothing)."""
        subscription.end(reason)
        if subscription in self.streams:
            self.streams.discard(subscription)
            self._release(subscription.caller.user.id)

    def _release(self, account: uuid.UUID) -> None:
        self.per_account[account] -= 1
        if self.per_account[account] <= 0:
            del self.per_account[account]

    async def aclose(self) -> None:
        """End every stream and stop the poller (shutdown)."""
        self.closed = True
        for subscription in list(self.streams):
            self.close(subscription, "the server is shutting down")
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- the poller ------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self.streams:
                if context.draining.is_set() or self.closed:
                    for subscription in list(self.streams):
                        self.close(subscription, "the server is shutting down")
                    break
                full = await self._poll()
                if not full:
                    await self._wait()
        except Exception:
            log.exception("live_feed_failed")
            for subscription in list(self.streams):
                self.close(subscription, "the server failed")
        finally:
            # Idle: the next stream starts from the log's head again.
            self._task = None
            self.cursor = None

    async def _wait(self) -> None:
        """Wait for this process's next row or the end of the poll interval, checking
        credentials meanwhile."""
        deadline = time.monotonic() + self.poll_seconds
        while self.streams:
            left = deadline - time.monotonic()
            if left <= 0 or context.draining.is_set():
                return
            try:
                async with asyncio.timeout(min(left, CREDENTIAL_CHECK_SECONDS)):
                    await self.audit_log.appended()
            except TimeoutError:
                await self._check_credentials()
            else:
                return

    async def _poll(self) -> bool:
        """Hand the new rows and the running jobs' progress to the streams; tell whether the
        page of rows was full (more wait)."""
        if self.cursor is None:
            return False
        follow_jobs = any(s.jobs is not None for s in self.streams)
        try:
            async with self.sessions() as db:
                rows = list(
                    await db.scalars(
                        select(AuditEvent)
                        .where(AuditEvent.seq > self.cursor)
                        .order_by(AuditEvent.seq)
                        .limit(FEED_BATCH)
                    )
                )
                running = (
                    list(
                        await db.scalars(
                            select(BatchJob)
                            .where(BatchJob.status == JobStatus.RUNNING)
                            .order_by(BatchJob.created_at, BatchJob.id)
                            .limit(MAX_RUNNING_JOBS)
                        )
                    )
                    if follow_jobs
                    else []
                )
        except Exception as exc:
            if not is_dependency_down(exc):
                raise
            # The streams stay open and the next poll tries again.
            log.warning("live_feed_poll_failed", extra={"error": type(exc).__name__})
            return False
        self.polls += 1
        # After the read, before handing anything out: once this host has heard that a
        # credential ended, no row read after that reaches its streams.
        await self._check_credentials()
        self._fan_out(rows, running if follow_jobs else None)
        return len(rows) == FEED_BATCH

    def _fan_out(self, rows: Sequence[AuditEvent], running: Sequence[BatchJob] | None) -> None:
        # Each row and job goes to the streams of its owner (and actor) and to those that see
        # everything: the work grows with what happened, not with rows times streams.
        everything: list[Subscription] = []
        by_user: dict[uuid.UUID, list[Subscription]] = {}
        for subscription in self.streams:
            if subscription.everything:
                everything.append(subscription)
            else:
                by_user.setdefault(subscription.caller.user.id, []).append(subscription)
        for row in rows:
            concerned = [u for u in {row.owner_id, row.actor_user_id} if u is not None]
            candidates = [s for user_id in concerned for s in by_user.get(user_id, ())]
            message: bytes | None = None
            for subscription in (*candidates, *everything):
                if subscription.sees(row):
                    message = message or frame(row)  # rendered once for every stream
                    subscription.push(row.seq, message)
            self.cursor = row.seq
        if running is not None:
            jobs_of: dict[uuid.UUID, list[BatchJob]] = {}
            for job in running:
                jobs_of.setdefault(job.owner_id, []).append(job)
            rendered: dict[uuid.UUID, bytes] = {}
            for subscription in self.streams:
                mine = (
                    running
                    if subscription.everything
                    else jobs_of.get(subscription.caller.user.id, [])
                )
                for job in subscription.moved(mine):
                    if job.id not in rendered:
                        rendered[job.id] = progress_frame(job)
                    subscription.push(None, rendered[job.id])
        for subscription in list(self.streams):
            if subscription.ended is not None:
                self.close(subscription, subscription.ended)

    async def _check_credentials(self) -> None:
        """End the streams whose credentials no longer hold; only those not checked since the
        credentials counter last moved (and, every `CREDENTIAL_RECHECK_SECONDS`, all)."""
        now = time.monotonic()
        if now < self._checks_retry_at:
            return
        epoch = self.epochs.read(Epoch.AUTH)
        everyone = now - self._full_check_at >= CREDENTIAL_RECHECK_SECONDS
        due = [s for s in self.streams if everyone or s.checked_epoch != epoch]
        if not due:
            return
        try:
            async with self.sessions() as db:
                standing = await _standing(db, [s.credential for s in due])
        except Exception as exc:
            if not is_dependency_down(exc):
                raise
            # Tried again at the next poll, not at every tick while the database is down.
            self._checks_retry_at = now + self.poll_seconds
            log.warning("live_feed_check_failed", extra={"error": type(exc).__name__})
            return
        if everyone:
            self._full_check_at = now
        at = utcnow()
        for subscription in due:
            if standing.holds(subscription.credential, at):
                subscription.checked_epoch = epoch
            else:
                self.close(subscription, "the credential ended")


def response(feed: LiveFeed, subscription: Subscription) -> LiveResponse:
    """The event stream `subscription`, as a response; the stream closes with it."""
    return LiveResponse(feed, subscription, stream(feed, subscription))


class LiveResponse(StreamingResponse):
    """A streaming response that gives its stream's place back however it ends (even when the
    client left before the first byte, and the body generator never started)."""

    def __init__(
        self, feed: LiveFeed, subscription: Subscription, content: AsyncGenerator[bytes, None]
    ) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.feed = feed
        self.subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.feed.close(self.subscription)


LiveFeedDep = Annotated[LiveFeed, Depends(component("live"))]


class FeedHolder(Protocol):
    """What holds the process's feed (the app state, which the pages pass)."""

    @property
    def live(self) -> LiveFeed: ...


async def open_stream(
    state: FeedHolder,
    caller: Caller,
    credential: Credential,
    filters: AuditFilter,
    after: int,
    *,
    valid_until: datetime | None,
) -> LiveResponse:
    """Return `open_feed_stream` on the feed of `state`."""
    return await open_feed_stream(
        state.live, caller, credential, filters, after, valid_until=valid_until
    )


async def open_feed_stream(
    feed: LiveFeed,
    caller: Caller,
    credential: Credential,
    filters: AuditFilter,
    after: int,
    *,
    valid_until: datetime | None,
) -> LiveResponse:
    """Open a stream for `caller` from after row `after`, as a response.

    Raises:
        TooManyStreams: the account has its limit of streams open in this process.
    """
    subscription = await feed.open(
        caller, credential, filters, after=after, valid_until=valid_until
    )
    return response(feed, subscription)


@router.get(
    "",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "an event stream: one message per audit row, `id` its `seq`; and "
            "`batch_job.progress` messages (no `id`) while the caller's jobs run",
            "content": {"text/event-stream": {}},
        },
        429: {"description": "the account has its limit of event streams open"},
    },
)
async def stream_events(
    caller: CallerDep,
    db: SessionDep,
    feed: LiveFeedDep,
    tokens: TokensDep,
    bearer: Annotated[str | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
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
    reconnects with `Last-Event-ID`. It ends within a second when its credential does (a key
    revoked, a sign-out, a password change, the account deactivated or its rights changed). An
    account may have a few streams open at once (429 past them).
    """
    start = after if after is not None else int(last_event_id) if last_event_id else None
    if start is None:
        start = await service.head(db)
    # A stream lasts: the request's connection goes back to the pool now.
    await db.close()
    return await open_feed_stream(
        feed,
        caller,
        credential_of(tokens, caller, bearer=bearer, api_key=api_key),
        AuditFilter(action=action),
        start,
        valid_until=caller.valid_until,
    )


def credential_of(
    tokens: TokenService, caller: Caller, *, bearer: str | None, api_key: str | None
) -> Credential:
    """The credential `caller` authenticated with: its API key, or its access token's session."""
    user = caller.user
    if caller.api_key_id is not None:
        return Credential(user.id, user.is_admin, api_key_id=caller.api_key_id)
    _, token = credentials(api_key, bearer)
    if token is None:  # not reached: the caller was authenticated by one or the other
        return Credential.of_account(user)
    claims = tokens.verify(token, "access")
    return Credential(user.id, user.is_admin, session_id=claims.family_id, version=claims.version)


async def stream(feed: LiveFeed, subscription: Subscription) -> AsyncGenerator[bytes, None]:
    """The messages of one stream: the rows it missed, then what the feed hands it."""
    caller = subscription.caller
    ends = time.monotonic() + MAX_STREAM_SECONDS
    if subscription.valid_until is not None:
        left = (subscription.valid_until - datetime.now(UTC)).total_seconds()
        ends = min(ends, time.monotonic() + max(left, 0.0))
    try:
        yield b"retry: %d\n\n" % RETRY_MS
        # Resuming: the rows up to where the feed was when the stream joined come from the log
        # (a page at a time, as the client reads them); the feed has the rest.
        while subscription.after < subscription.joined and subscription.ended is None:
            async with feed.sessions() as db:
                rows = await service.events_after(
                    db,
                    caller.user,
                    subscription.filters,
                    everything=subscription.everything,
                    after=subscription.after,
                    limit=BATCH,
                )
            for row in rows:
                if subscription.ended is not None:
                    break
                subscription.after = row.seq
                yield frame(row)
            if len(rows) < BATCH:
                break
        quiet_since = time.monotonic()
        while subscription.ended is None:
            message = subscription.next()
            if message is not None:
                yield message
                quiet_since = time.monotonic()
                continue
            now = time.monotonic()
            if now >= ends or context.draining.is_set() or feed.closed:
                break
            if now - quiet_since >= HEARTBEAT_SECONDS:
                yield b": keep-alive\n\n"
                quiet_since = now
                continue
            # Woken by a message or the stream's end; at least every poll interval, to notice
            # a shutdown.
            await subscription.wait(
                min(quiet_since + HEARTBEAT_SECONDS - now, ends - now, POLL_SECONDS)
            )
    finally:
        feed.close(subscription)
