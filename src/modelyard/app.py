"""The application factory: components, routers, error handlers and middleware."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from modelyard import __version__
from modelyard.accounts.router import me_router, users_router
from modelyard.audit.live import router as live_events_router
from modelyard.audit.router import router as audit_router
from modelyard.auth.router import api_keys_router, auth_router
from modelyard.compare.router import router as compare_router
from modelyard.composition import open_components, role_of
from modelyard.config import Settings
from modelyard.downloads.router import router as downloads_router
from modelyard.drift.router import router as drift_router
from modelyard.errors import document_errors, install_error_handlers, v2_error_response
from modelyard.experiments.router import router as experiments_router
from modelyard.files.router import router as files_router
from modelyard.jobs.router import router as batch_jobs_router
from modelyard.observability import health, tracing
from modelyard.observability.logging import configure_logging
from modelyard.observability.metrics import Metrics
from modelyard.observability.middleware import EdgeMiddleware
from modelyard.observability.scrape import router as metrics_router
from modelyard.predictions import fastpath, oip, rest, v2
from modelyard.predictions.log import router as log_router
from modelyard.predictions.traffic import router as traffic_router
from modelyard.registry.router import router as registry_router
from modelyard.teams.router import router as teams_router
from modelyard.web.dashboard import install_dashboard
from modelyard.web.docs import install_docs
from modelyard.web.model_pages import UPLOAD_PATH
from modelyard.webhooks.router import router as webhooks_router

log = logging.getLogger(__name__)

# Routes whose bodies are artifacts: they get MAX_UPLOAD_BYTES instead of MAX_REQUEST_BYTES.
UPLOAD_PATHS = ("/api/v1/models/upload", "/api/v1/files/upload", UPLOAD_PATH)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app; with no settings they are read from the environment."""
    settings = settings or Settings()
    configure_logging(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_components(settings, role=role_of(settings), metrics=metrics) as state:
            app.state.modelyard = state
            urls = {}
            if settings.role != "serving":  # a serving process has neither page
                urls = {"dashboard": f"{settings.local_url}/", "docs": f"{settings.local_url}/docs"}
            log.info("started", extra={"version": __version__, "env": settings.env.value, **urls})
            yield
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
