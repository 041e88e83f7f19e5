"""The application factory: components, routers, error handlers and middleware."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from redis.asyncio import Redis
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from modelyard import __version__
from modelyard.accounts.router import me_router, users_router
from modelyard.artifacts import make_store
from modelyard.audit.live import LiveFeed
from modelyard.audit.live import router as live_events_router
from modelyard.audit.router import router as audit_router
from modelyard.audit.service import AuditLog
from modelyard.auth.oidc import OidcClient
from modelyard.auth.passwords import PasswordHasher
from modelyard.auth.router import api_keys_router, auth_router
from modelyard.auth.service import Caller, FailureLimit
from modelyard.auth.tokens import TokenService
from modelyard.changes.epochs import Epoch, Epochs
from modelyard.changes.events import make_events
from modelyard.changes.hotcache import REFRESH_GRACE_SECONDS, EpochCache
from modelyard.changes.outage import OutageCache
from modelyard.compare.router import router as compare_router
from modelyard.config import Settings
from modelyard.db.engine import make_engine, make_sessionmaker
from modelyard.downloads.router import router as downloads_router
from modelyard.drift.router import router as drift_router
from modelyard.errors import document_errors, install_error_handlers, v2_error_response
from modelyard.experiments.router import router as experiments_router
from modelyard.files.router import router as files_router
from modelyard.jobs.queue import InProcessJobs, RedisJobs
from modelyard.jobs.router import router as batch_jobs_router
from modelyard.jobs.runner import JobRunner
from modelyard.jobs.service import JobQueue
from modelyard.observability import health, tracing
from modelyard.observability.logging import configure_logging
from modelyard.observability.metrics import Metrics
from modelyard.observability.middleware import EdgeMiddleware
from modelyard.observability.scrape import router as metrics_router
from modelyard.predictions import fastpath, oip, rest, v2
from modelyard.predictions.inputs import InputLimits
from modelyard.predictions.log import maintenance
from modelyard.predictions.log import router as log_router
from modelyard.predictions.log.writer import PredictionLog
from modelyard.predictions.predictor import Predictor
from modelyard.predictions.targets import Target
from modelyard.predictions.traffic import router as traffic_router
from modelyard.ratelimit import RateLimiter, SharedWindows
from modelyard.registry import service as registry_service
from modelyard.registry.router import router as registry_router
from modelyard.serving.batching import Batcher
from modelyard.serving.cache import ModelCache
from modelyard.serving.formats import Framework
from modelyard.serving.probe import make_prober, onnx_cost_limits
from modelyard.serving.runtimes.onnx import configure_onnx_cost, configure_onnx_memory
from modelyard.serving.threads import configure_onnx_threads, onnx_threads_per_worker
from modelyard.serving.warmup import warm_up_process
from modelyard.state import AppState
from modelyard.teams.router import router as teams_router
from modelyard.web.dashboard import install_dashboard
from modelyard.web.docs import install_docs
from modelyard.web.model_pages import UPLOAD_PATH
from modelyard.webhooks.delivery import DeliveryWorker, feed_from_actions
from modelyard.webhooks.router import router as webhooks_router

log = logging.getLogger(__name__)

# Routes whose bodies are artifacts: they get MAX_UPLOAD_BYTES instead of MAX_REQUEST_BYTES.
UPLOAD_PATHS = ("/api/v1/models/upload", "/api/v1/files/upload", UPLOAD_PATH)
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


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app; with no settings they are read from the environment."""
    settings = settings or Settings()
    configure_logging(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.sqlalchemy_url)
        if tracing.enabled():
            tracing.instrument_engine(engine)
        sessions = make_sessionmaker(engine)
        redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
        store = make_store(settings)
        prediction_log = PredictionLog.from_settings(settings, sessions, metrics)
        rate_limiter = RateLimiter(redis, SharedWindows(settings.data_dir))
        predictor = Predictor(
            store=store,
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
        epochs = Epochs(settings.data_dir)
        caller_cache: EpochCache[str, Caller] = EpochCache(
            epochs, Epoch.AUTH, ttl_seconds=CALLER_CACHE_SECONDS
        )
        target_cache: EpochCache[Hashable, Target] = EpochCache(
            epochs,
            Epoch.REGISTRY,
            ttl_seconds=TARGET_CACHE_SECONDS_WITH_EVENTS if redis else TARGET_CACHE_SECONDS,
        )
        events = make_events(
            epochs, redis, on_health=functools.partial(_follow, caller_cache, target_cache)
        )
        audit_log = AuditLog(sessions)
        events.on_action(audit_log)
        state = AppState(
            settings=settings,
            engine=engine,
            sessions=sessions,
            passwords=PasswordHasher(settings),
            tokens=TokenService(settings),
            rate_limiter=rate_limiter,
            failures=FailureLimit(
                rate_limiter,
                limit=settings.password_failures_per_account,
                window_seconds=settings.password_failure_window_seconds,
            ),
            store=store,
            prober=make_prober(settings),
            metrics=metrics,
            prediction_log=prediction_log,
            predictor=predictor,
            outage_cache=OutageCache(epochs, max_age_seconds=settings.outage_cache_seconds),
            epochs=epochs,
            events=events,
            caller_cache=caller_cache,
            target_cache=target_cache,
            audit_log=audit_log,
            live=LiveFeed(
                sessions,
                audit_log,
                epochs,
                streams_per_account=settings.live_events_streams_per_account,
            ),
            redis=redis,
            webhooks=(
                DeliveryWorker.from_settings(settings, sessions)
                if settings.role != "serving" and settings.webhook_delivery
                else None
            ),
            oidc=OidcClient(settings) if settings.sso_enabled else None,
        )
        app.state.modelyard = state
        # Registry actions queue webhook deliveries (in any role: the rows are sent by whichever
        # process runs a worker).
        events.on_action(feed_from_actions(sessions, state.webhooks))
        await state.prediction_log.start()
        batch_jobs: JobQueue | None = None
        if settings.role != "serving":
            if settings.redis_url:
                # `modelyard worker` processes run the jobs; this process only enqueues them.
                batch_jobs = RedisJobs(settings)
            else:
                batch_jobs = InProcessJobs(
                    JobRunner(
                        sessions=sessions,
                        store=store,
                        predictor=predictor,
                        events=events,
                        settings=settings,
                    ),
                    sessions,
                    poll_seconds=settings.batch_job_poll_seconds,
                )
        state.batch_jobs = batch_jobs
        upkeep = (
            asyncio.create_task(maintenance.run_periodically(engine, settings))
            if settings.prediction_log_maintenance_interval_seconds
            else None
        )
        events.start()
        if state.webhooks is not None:
            state.webhooks.start()

        async def frameworks_in_use() -> set[Framework]:
            async with sessions() as db:
                return await registry_service.frameworks_in_use(db)

        # Before the first request: the upload probe is starting and the registry's frameworks
        # are imported (a second or two), so neither an upload nor a first prediction waits.
        await warm_up_process(state.prober, frameworks_in_use)
        # After the warm-up, which hides pyarrow from the imports it makes: a Parquet job must
        # not start meanwhile.
        if isinstance(batch_jobs, InProcessJobs):
            batch_jobs.start()
        urls = {}
        if settings.role != "serving":  # a serving process has neither page
            urls = {"dashboard": f"{settings.local_url}/", "docs": f"{settings.local_url}/docs"}
        log.info("started", extra={"version": __version__, "env": settings.env.value, **urls})
        try:
            yield
        finally:
            # Readiness answers 503 from here on, so load balancers stop sending traffic.
            state.shutting_down = True
            # Event streams end (their clients reconnect elsewhere), and their poller stops.
            await state.live.aclose()
            if upkeep is not None:
                upkeep.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upkeep
            # A running batch job stops where it is; it resumes from its last stored chunk.
            if batch_jobs is not None:
                await batch_jobs.aclose()
            # Uvicorn has finished in-flight requests; nothing new reaches the batcher.
            await events.aclose()
            # Shadow copies are extra work, not answers owed: stopped, not waited for.
            await predictor.aclose()
            if state.webhooks is not None:
                await state.webhooks.aclose()
            await predictor.batcher.aclose()
            # While the database and engine are still there: no logged prediction is lost.
            await state.prediction_log.aclose()
            if state.redis is not None:
                await state.redis.aclose()
            await state.prober.aclose()
            if state.oidc is not None:
                await state.oidc.aclose()
            await state.store.aclose()
            await engine.dispose()
            rate_limiter.close()
            epochs.close()
            tracing.flush()
            log.info("stopped")

    app = FastAPI(
        title="Modelyard",
        version=__version__,
        summary="Model registry and serving platform",
        lifespan=lifespan,
        docs_url=None,  # served by install_docs from local assets
        redoc_url=None,
        # FastAPI's own OpenTelemetry hooks: off. Metrics are Prometheus (/metrics), logs are
        # ours; left on, they cost every request a provider check (~3% of a predict's CPU).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    install_error_handlers(app)
    document_errors(app)
    # Starlette tries routes in order: the prediction routes first, they take the traffic.
    routers = [rest.router, v2.router, health.router]
    if settings.role != "serving":
        # A serving replica answers predictions only: everything else is 404 there, never a
        # half-working 500 (no uploads, so no upload probe; no docs of routes it lacks).
        install_docs(app)
        routers += [
            auth_router,
            me_router,
            api_keys_router,
            users_router,
            downloads_router,
            registry_router,
            drift_router,
            files_router,
            experiments_router,
            compare_router,
            webhooks_router,
            teams_router,
            log_router.router,
            traffic_router.router,
            audit_router,
            live_events_router,
            batch_jobs_router,
        ]
    for router in (*routers, metrics_router):
        app.include_router(router)
    if settings.role != "serving":
        # After the API: its routes are tried first.
        install_dashboard(app)
    app.add_exception_handler(oip.OIPError, _oip_error)
    # Innermost: prediction requests answered from the caches skip FastAPI's routing.
    app.add_middleware(
        fastpath.PredictFastPath,
        routes={
            r.path: r
            for r in (*rest.router.routes, *v2.router.routes)
            if isinstance(r, APIRoute) and r.path in fastpath.ROUTES
        },
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "X-Process-Time"],
        )
    if tracing.enabled() or tracing.configure():
        # Just inside the edge: the span carries the request id (OTEL_* environment; off, not
        # installed at all).
        app.add_middleware(tracing.TracingMiddleware)
    # Added last, so it is outermost: it sees every request, including CORS preflights.
    app.add_middleware(
        EdgeMiddleware,
        max_request_bytes=settings.max_request_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        upload_paths=UPLOAD_PATHS,
        metrics=metrics,
    )
    if settings.forwarded_allow_ips:
        # Outside the edge: rate limits and logs see the client a trusted proxy names. Any
        # other peer's X-Forwarded-For is ignored (a new one per request dodged the login limit).
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    return app


async def _oip_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, oip.OIPError)  # noqa: S101 - registered for this class only
    return v2_error_response(exc.status, exc.message)
