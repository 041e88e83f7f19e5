"""Where batch jobs wait for a worker: a Redis queue (saq) when Redis is configured, else the
jobs table itself, polled by a task in each server process.

Either way the jobs table decides: a worker runs a job only once its conditional UPDATE has
claimed it (`service.claim`), so a job delivered twice, or found by two pollers, runs once.
Delivery only has to be at least once, and every worker sweeps for what delivery missed: queued
jobs (Redis was down when one was created) and running jobs whose lease lapsed (their worker
died), which are then resumed.

Which job runs is the table's choice too: a delivery (a saq entry, a wake-up of the in-process
worker) only says that a worker is wanted. The worker then runs the fairest runnable job
(`service.fairest_job_id`), whichever entry woke it, and goes on while any is runnable; so the
queue's FIFO order never makes one account's job wait behind another account's flood.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelyard.config import Settings
from modelyard.jobs import service
from modelyard.jobs.runner import Heartbeat, JobRunner
from modelyard.jobs.service import JobQueue
from modelyard.polling import poll_forever

if TYPE_CHECKING:  # saq is imported where Redis is used: a process without it never pays
    from saq.queue.redis import RedisQueue
    from saq.types import Context

log = logging.getLogger(__name__)

RUN_FUNCTION = "run_batch_job"
# Jobs a sweep looks at per pass.
SWEEP_LIMIT = 100
# Picks a worker tries when other workers claim the jobs it picked first.
CLAIM_TRIES = 5
# How long saq keeps a finished queue entry (its own bookkeeping; the jobs table keeps ours).
QUEUE_ENTRY_TTL_SECONDS = 3600
# How often `modelyard worker` touches its heartbeat file (deploy/healthcheck.py reads its age).
HEARTBEAT_SECONDS = 10.0


async def run_fairest(
    runner: JobRunner,
    sessions: async_sessionmaker[AsyncSession],
    *,
    heartbeat: Heartbeat | None = None,
) -> bool:
    """Run the fairest runnable job (`service.fairest_job_id`) to its end; return whether one
    ran (False: none may start now)."""
    for _ in range(CLAIM_TRIES):
        async with sessions() as db:
            job_id = await service.fairest_job_id(db, max_running=runner.max_running)
        if job_id is None:
            return False
        if await runner.run(job_id, heartbeat=heartbeat):
            return True
        # Another worker claimed it first, or its account reached its cap meanwhile.
    return False


class InProcessJobs(JobQueue):
    """Runs jobs in this process, one at a time, from the jobs table (no Redis)."""

    def __init__(
        self,
        runner: JobRunner,
        sessions: async_sessionmaker[AsyncSession],
        *,
        poll_seconds: float,
    ) -> None:
        self.runner = runner
        self.sessions = sessions
        self.poll_seconds = poll_seconds
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling for jobs."""
        self._task = asyncio.create_task(self._loop(), name="batch-jobs-in-process")

    async def submit(self, job_id: uuid.UUID) -> None:
        self._wakeup.set()

    async def aclose(self) -> None:
        """Stop: a job being run stops where it is, and resumes from its last chunk later
        (here after a restart, or in another process once its lease lapses)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        await poll_forever(
            self._run_one,
            every=self.poll_seconds,
            failure="batch_jobs_poll_failed",
            wake=self._wakeup,
        )

    async def _run_one(self) -> bool:
        return await run_fairest(self.runner, self.sessions)


class RedisJobs(JobQueue):
    """Sends jobs to `modelyard worker` processes through a saq queue on Redis.

    The queue entry's key is the job id, so submitting a job twice while it waits is a no-op;
    a job resumed after its worker died goes again under `<id>:<attempt>`.
    """

    def __init__(self, settings: Settings) -> None:
        from saq.queue.redis import RedisQueue

        assert settings.redis_url is not None  # noqa: S101 - chosen only with Redis
        self.queue: RedisQueue = RedisQueue.from_url(
            settings.redis_url, name=settings.batch_job_queue
        )

    async def submit(self, job_id: uuid.UUID, *, key: str | None = None) -> None:
        from saq import Job

        try:
            await self.queue.enqueue(
                Job(
                    function=RUN_FUNCTION,
                    kwargs={"batch_job_id": str(job_id)},
                    key=key or str(job_id),
                    # Jobs take as long as their files: no time limit, no retries by saq (the
                    # sweep below resumes jobs whose worker died, from the jobs table).
                    timeout=0,
                    retries=1,
                    ttl=QUEUE_ENTRY_TTL_SECONDS,
                )
            )
        except (RedisError, OSError) as exc:
            log.warning(
                "batch_job_not_enqueued", extra={"job_id": str(job_id), "error": type(exc).__name__}
            )

    async def aclose(self) -> None:
        # The client only: saq's `disconnect` also unsubscribes a pub/sub it never used here,
        # a round trip that raises when Redis is down (and shutdown must not).
        with contextlib.suppress(RedisError, OSError):
            await self.queue.redis.aclose()

    async def sweep(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        """Enqueue what delivery missed: queued jobs, and running ones whose worker died."""
        async with sessions() as db:
            queued = await service.queued_job_ids(db, limit=SWEEP_LIMIT)
            abandoned = await service.abandoned_jobs(db, limit=SWEEP_LIMIT)
        for job_id in queued:
            await self.submit(job_id)
        for job_id, attempts in abandoned:
            # Keyed by the attempt that died: every worker's sweep sends it once.
            await self.submit(job_id, key=f"{job_id}:{attempts}")


async def run_worker(
    settings: Settings,
    *,
    jobs: RedisJobs,
    runner: JobRunner,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Run batch jobs from the Redis queue until SIGTERM or SIGINT (`modelyard worker`), with
    the components the composition root built."""
    from saq import Worker

    async def run_batch_job(ctx: Context, *, batch_job_id: str) -> None:
        # The entry (keyed by `batch_job_id`) only wakes this slot: it runs the fairest job,
        # then the next, while any may start (the entry of a job run here finds none, or
        # another).
        entry = ctx.get("job")

        async def heartbeat(rows_done: int, rows_total: int | None) -> None:
            if entry is not None and rows_total:
                await entry.update(progress=min(rows_done / rows_total, 1.0))

        while await run_fairest(runner, sessions, heartbeat=heartbeat):
            pass

    async def heartbeat_forever() -> None:
        # The loop's sign of life for the container's health check; a dependency outage is the
        # sweep's and the jobs' to report (restarting the worker would not mend it).
        path = settings.worker_heartbeat_file
        while True:
            try:
                path.touch()
            except OSError as exc:
                log.warning("worker_heartbeat_failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def sweep() -> bool:
        await jobs.sweep(sessions)
        return False  # what it found is on the queue now: the next sweep after the pause

    async def sweep_forever() -> None:
        await poll_forever(
            sweep, every=settings.batch_job_poll_seconds, failure="batch_jobs_sweep_failed"
        )

    worker = Worker(
        jobs.queue,
        functions=[(RUN_FUNCTION, run_batch_job)],
        concurrency=settings.batch_job_concurrency,
    )
    background = [
        asyncio.create_task(sweep_forever(), name="batch-jobs-sweep"),
        asyncio.create_task(heartbeat_forever(), name="worker-heartbeat"),
    ]
    log.info("worker_started", extra={"queue": settings.batch_job_queue})
    try:
        await worker.start()  # until SIGTERM or SIGINT
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        settings.worker_heartbeat_file.unlink(missing_ok=True)
        log.info("worker_stopped")
