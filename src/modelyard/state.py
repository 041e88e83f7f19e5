"""The components one process holds, as `modelyard.composition` builds them.

Routes take the one component they need (`EventsDep`, `StoreDep`, ..., each beside its type,
made with `modelyard.deps.component`); `StateDep`, the whole of them, remains only for the
routes of `predictions/` and `web/` until they are converted (#24).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

# Types only: a command that needs the core alone never imports the serving stack.
if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from modelyard.artifacts.store import ArtifactStore
    from modelyard.audit.live import LiveFeed
    from modelyard.audit.service import AuditLog
    from modelyard.auth.oidc import OidcClient
    from modelyard.auth.passwords import PasswordHasher
    from modelyard.auth.service import Caller, FailureLimit
    from modelyard.auth.tokens import TokenService
    from modelyard.changes.epochs import Epochs
    from modelyard.changes.events import LocalEvents
    from modelyard.changes.hotcache import EpochCache
    from modelyard.changes.outage import OutageCache
    from modelyard.config import Settings
    from modelyard.jobs.runner import JobRunner
    from modelyard.jobs.service import JobQueue
    from modelyard.observability.health import Readiness
    from modelyard.observability.metrics import Metrics
    from modelyard.predictions.log.writer import PredictionLog
    from modelyard.predictions.predictor import Predictor
    from modelyard.predictions.targets import Target
    from modelyard.ratelimit import RateLimiter
    from modelyard.serving.probe import Prober
    from modelyard.webhooks.delivery import DeliveryWorker


@dataclass
class Core:
    """What every process that works on the registry holds (a CLI command holds only these):
    the database, the artifact store, and the events whose actions reach the audit log and the
    webhooks."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis | None
    store: ArtifactStore
    epochs: Epochs
    events: LocalEvents  # RedisEvents with Redis
    audit_log: AuditLog


@dataclass
class AppState(Core):
    """The components of a server or worker process (`composition.Role`)."""

    passwords: PasswordHasher
    tokens: TokenService
    rate_limiter: RateLimiter
    failures: FailureLimit
    prober: Prober
    metrics: Metrics
    prediction_log: PredictionLog
    predictor: Predictor
    outage_cache: OutageCache[Hashable, Any]
    caller_cache: EpochCache[str, Caller]
    target_cache: EpochCache[Hashable, Target]
    # The event streams of this process and their one poller.
    live: LiveFeed
    # Whether this process takes traffic (no: it is shutting down), its last readiness checks.
    readiness: Readiness
    # This process's webhook delivery worker (None: a serving replica or a batch-job worker, or
    # delivery turned off).
    webhooks: DeliveryWorker | None = None
    # Where batch jobs go (None on a `serving` replica, which has no batch job routes).
    batch_jobs: JobQueue | None = None
    # What runs batch jobs in this process (None where another process runs them).
    job_runner: JobRunner | None = None
    # The OpenID provider of single sign-on (None: not configured).
    oidc: OidcClient | None = None


async def state_dependency(conn: HTTPConnection) -> AppState:
    """Return the app's components (async: FastAPI runs a sync dependency in a thread pool)."""
    state: AppState = conn.app.state.modelyard
    return state


StateDep = Annotated[AppState, Depends(state_dependency)]
