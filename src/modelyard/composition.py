"""The composition root: one process's components, built from its settings, started and stopped.

The app's lifespan, `modelyard worker` and the CLI's commands build their components here and
nowhere else, so that they hold the same ones wired the same way: a batch job predicts under
the limits a prediction request does, and an action recorded by any process reaches the audit
log and the webhooks. What differs between processes is their `Role`:

- `api` (the `all` and `api` settings roles): everything; batch jobs run in this process
  without Redis (with Redis, `modelyard worker` processes run them); webhooks are sent.
- `serving`: predictions only; no upload probe, no batch jobs, no webhook delivery.
- `worker`: batch jobs from the Redis queue; no upload probe, no warm-up, no webhook delivery
  (the API processes send them), and it listens to no other replica's events (it remembers no
  registry answer for long: each job resolves its version once).

A command that only changes the registry takes the `Core` (`open_core`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Literal

from redis.asyncio import Redis

from modelyard.artifacts import make_store
from modelyard.audit.live import LiveFeed
from modelyard.audit.service import AuditLog
from modelyard.auth.oidc import OidcClient
from modelyard.auth.passwords import PasswordHasher
from modelyard.auth.service import Caller, FailureLimit
from modelyard.auth.tokens import TokenService
from modelyard.changes.epochs import Epoch, Epochs
from modelyard.changes.events import make_events
from modelyard.changes.hotcache import REFRESH_GRACE_SECONDS, EpochCache
from modelyard.changes.outage import OutageCache
from modelyard.config import Settings
from modelyard.db.engine import make_engine, make_sessionmaker
from modelyard.jobs.queue import InProcessJobs, RedisJobs
from modelyard.jobs.runner import JobRunner
from modelyard.jobs.service import JobQueue
from modelyard.observability import tracing
from modelyard.observability.health import Readiness
from modelyard.observability.metrics import Metrics
from modelyard.predictions.inputs import InputLimits
from modelyard.predictions.log import maintenance
from modelyard.predictions.log.writer import PredictionLog
from modelyard.predictions.predictor import Predictor
from modelyard.predictions.targets import Target
from modelyard.ratelimit import RateLimiter, SharedWindows
from modelyard.registry import service as registry_service
from modelyard.serving.batching import Batcher
from modelyard.serving.cache import ModelCache
from modelyard.serving.formats import Framework
from modelyard.serving.probe import ModelProber, NoProber, onnx_cost_limits
from modelyard.serving.runtimes.onnx import configure_onnx_cost, configure_onnx_memory
from modelyard.serving.threads import configure_onnx_threads, onnx_threads_per_worker
from modelyard.serving.warmup import warm_up_process
from modelyard.state import AppState, Core
from modelyard.webhooks.delivery import DeliveryWorker, feed_from_actions

log = logging.getLogger(__name__)

Role = Literal["api", "serving", "worker"]

# A checked credential is reused this long unless something is revoked (epochs), so the API
# key's last_used_at is still refreshed about once a minute.
CALLER_CACHE_SECONDS = 60.0
# Resolutions follow registry changes at once through the epochs; without Redis, the lifetime
# bounds what a replica on another host may serve after a promotion.
TARGET_CACHE_SECONDS = 5.0
# With Redis, other replicas' changes arrive as events: resolutions may live as long as callers.
TARGET_CACHE_SECONDS_WITH_EVENTS = 60.0
# Redis configured but unreachable: other replicas' events may be missed, so answers are kept
# this long (plus the fast path's grace) and replicas converge within these bounds.
DEGRADED_CALLER_CACHE_SECONDS = 5.0
DEGRADED_TARGET_CACHE_SECONDS = 2.0
DEGRADED_GRACE_SECONDS = 1.0


def role_of(settings: Settings) -> Role:
    """Return the role of a server process (`modelyard serve`) with these settings."""
    return "serving" if settings.role == "serving" else "api"


@asynccontextmanager
async def open_core(settings: Settings) -> AsyncIterator[Core]:
    """Hold the database, the artifact store and the events for the block (a CLI command)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    core = _core(settings, epochs=Epochs(settings.data_dir), on_health=None)
    # The command sends no delivery: a server process does.
    core.events.on_action(feed_from_actions(core.sessions, None))
    try:
        yield core
    finally:
        await _close_core(core)


def _core(settings: Settings, *, epochs: Epochs, on_health: Callable[[bool], None] | None) -> Core:
    engine = make_engine(settings.sqlalchemy_url)
    if tracing.enabled():
        tracing.instrument_engine(engine)
    sessions = make_sessionmaker(engine)
    redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
    events = make_events(epochs, redis, on_health=on_health)
    audit_log = AuditLog(sessions)
    events.on_action(audit_log)
    return Core(
        settings=settings,
        engine=engine,
        sessions=sessions,
        redis=redis,
        store=make_store(settings),
        epochs=epochs,
        events=events,
        audit_log=audit_log,
    )


async def _close_core(core: Core) -> None:
    if core.redis is not None:
        await core.redis.aclose()
    await core.store.aclose()
    await core.engine.dispose()
    core.epochs.close()


@asynccontextmanager
async def open_components(
    settings: Settings, *, role: Role, metrics: Metrics | None = None
) -> AsyncIterator[AppState]:
    """Build and start the components of a process in `role`; stop them when the block ends.

    `metrics` are the app's, when its middleware was given them before its lifespan started.
    """
    state = _build(settings, role=role, metrics=metrics or Metrics())
    upkeep = await _start(state, role=role)
    try:
        yield state
    finally:
        await _stop(state, upkeep)


def _build(settings: Settings, *, role: Role, metrics: Metrics) -> AppState:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Shared by every process of the host (a server's workers, `modelyard worker`, a command):
    # what one changes, the others' caches forget at once.
    epochs = Epochs(settings.data_dir)
    caller_cache: EpochCache[str, Caller] = EpochCache(
        epochs, Epoch.AUTH, ttl_seconds=CALLER_CACHE_SECONDS
    )
    target_cache: EpochCache[Hashable, Target] = EpochCache(
        epochs,
        Epoch.REGISTRY,
        ttl_seconds=TARGET_CACHE_SECONDS_WITH_EVENTS
        if settings.redis_url
        else TARGET_CACHE_SECONDS,
    )
    core = _core(
        settings,
        epochs=epochs,
        on_health=functools.partial(_follow, caller_cache, target_cache),
    )
    prediction_log = PredictionLog.from_settings(settings, core.sessions, metrics)
    rate_limiter = RateLimiter(core.redis, SharedWindows(settings.data_dir))
    predictor = Predictor(
        store=core.store,
        cache=ModelCache.from_settings(settings, metrics),
        batcher=Batcher.from_settings(settings, metrics),
        log=prediction_log,
        metrics=metrics,
        limits=InputLimits(
            max_rows=settings.max_batch_rows, max_elements=settings.max_predict_elements
        ),
        run_timeout_seconds=settings.predict_timeout_seconds,
        rate_limiter=rate_limiter,
        rate_limit_per_minute=settings.predict_rate_limit_per_minute,
        rng=random.Random(settings.traffic_random_seed),  # noqa: S311 - routing, not security
        max_shadows_in_flight=settings.shadow_max_in_flight,
    )
    # Registered with the first ONNX session (sessions pick the arena up when created).
    configure_onnx_memory(settings.onnx_memory_bytes, batch_rows=settings.batch_max_size)
    # ONNX graphs are estimated again on every load, against this process's budgets (#25).
    configure_onnx_cost(onnx_cost_limits(settings))
    # Each worker's share of the cores for one ONNX call.
    configure_onnx_threads(
        onnx_threads_per_worker(settings.onnx_intra_op_threads, settings.workers)
    )
    webhooks = (
        DeliveryWorker.from_settings(settings, core.sessions)
        if role == "api" and settings.webhook_delivery
        else None
    )
    # Registry actions queue webhook deliveries in every role: the rows are sent by whichever
    # process runs a delivery worker.
    core.events.on_action(feed_from_actions(core.sessions, webhooks))
    job_runner = (
        JobRunner(
            sessions=core.sessions,
            store=core.store,
            predictor=predictor,
            events=core.events,
            settings=settings,
        )
        if role == "worker" or (role == "api" and not settings.redis_url)
        else None
    )
    batch_jobs: JobQueue | None = None
    if role == "worker" or (role == "api" and settings.redis_url):
        # `modelyard worker` processes run the jobs; an API process only enqueues them.
        batch_jobs = RedisJobs(settings)
    elif job_runner is not None:
        batch_jobs = InProcessJobs(
            job_runner, core.sessions, poll_seconds=settings.batch_job_poll_seconds
        )
    return AppState(
        settings=core.settings,
        engine=core.engine,
        sessions=core.sessions,
        redis=core.redis,
        store=core.store,
        epochs=core.epochs,
        events=core.events,
        audit_log=core.audit_log,
        passwords=PasswordHasher(settings),
        tokens=TokenService(settings),
        rate_limiter=rate_limiter,
        failures=FailureLimit(
            rate_limiter,
            limit=settings.password_failures_per_account,
            window_seconds=settings.password_failure_window_seconds,
        ),
        # Uploads are probed by `api` processes only.
        prober=ModelProber.from_settings(settings) if role == "api" else NoProber(),
        metrics=metrics,
        prediction_log=prediction_log,
        predictor=predictor,
        outage_cache=OutageCache(core.epochs, max_age_seconds=settings.outage_cache_seconds),
        caller_cache=caller_cache,
        target_cache=target_cache,
        live=LiveFeed(
            core.sessions,
            core.audit_log,
            core.epochs,
            streams_per_account=settings.live_events_streams_per_account,
        ),
        readiness=Readiness(),
        webhooks=webhooks,
        batch_jobs=batch_jobs,
        job_runner=job_runner,
        # Sign-in is the control plane's: a serving replica or a worker has no sign-in routes.
        oidc=OidcClient(settings) if settings.sso_enabled and role == "api" else None,
    )


async def _start(state: AppState, *, role: Role) -> asyncio.Task[None] | None:
    """Start what runs in the background; return the prediction log's upkeep task, if any."""
    settings = state.settings
    await state.prediction_log.start()
    upkeep = (
        asyncio.create_task(maintenance.run_periodically(state.engine, settings))
        if role != "worker" and settings.prediction_log_maintenance_interval_seconds
        else None
    )
    if role != "worker":
        state.events.start()
    if state.webhooks is not None:
        state.webhooks.start()
    if role != "worker":
        sessions = state.sessions

        async def frameworks_in_use() -> set[Framework]:
            async with sessions() as db:
                return await registry_service.frameworks_in_use(db)

        # Before the first request: the upload probe is starting and the registry's frameworks
        # are imported (a second or two), so neither an upload nor a first prediction waits.
        await warm_up_process(state.prober, frameworks_in_use)
    # After the warm-up, which hides pyarrow from the imports it makes: a Parquet job must not
    # start meanwhile.
    if isinstance(state.batch_jobs, InProcessJobs):
        state.batch_jobs.start()
    return upkeep


async def _stop(state: AppState, upkeep: asyncio.Task[None] | None) -> None:
    """Stop the components, each once nothing that uses it runs any more."""
    # Readiness answers 503 from here on, so load balancers stop sending traffic.
    state.readiness.shutting_down = True
    # Event streams end (their clients reconnect elsewhere), and their poller stops.
    await state.live.aclose()
    if upkeep is not None:
        upkeep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upkeep
    # A running batch job stops where it is; it resumes from its last stored chunk.
    if state.batch_jobs is not None:
        await state.batch_jobs.aclose()
    # Uvicorn has finished in-flight requests; nothing new reaches the batcher.
    await state.events.aclose()
    # Shadow copies are extra work, not answers owed: stopped, not waited for.
    await state.predictor.aclose()
    if state.webhooks is not None:
        await state.webhooks.aclose()
    await state.predictor.batcher.aclose()
    # While the database and engine are still there: no logged prediction is lost.
    await state.prediction_log.aclose()
    await state.prober.aclose()
    if state.oidc is not None:
        await state.oidc.aclose()
    await _close_core(state)
    state.rate_limiter.close()
    tracing.flush()


def _follow(
    callers: EpochCache[str, Caller], targets: EpochCache[Hashable, Target], healthy: bool
) -> None:
    """Keep remembered answers briefly while other replicas' events cannot arrive."""
    callers.ttl_seconds = CALLER_CACHE_SECONDS if healthy else DEGRADED_CALLER_CACHE_SECONDS
    targets.ttl_seconds = (
        TARGET_CACHE_SECONDS_WITH_EVENTS if healthy else DEGRADED_TARGET_CACHE_SECONDS
    )
    grace = REFRESH_GRACE_SECONDS if healthy else DEGRADED_GRACE_SECONDS
    callers.grace_seconds = targets.grace_seconds = grace
