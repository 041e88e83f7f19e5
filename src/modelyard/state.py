"""The typed application state: the stateful components one process holds, built in the lifespan."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from modelyard.artifacts.store import ArtifactStore
from modelyard.audit.service import AuditLog
from modelyard.auth.oidc import OidcClient
from modelyard.auth.passwords import PasswordHasher
from modelyard.auth.service import Caller, FailureLimit
from modelyard.auth.tokens import TokenService
from modelyard.changes.epochs import Epochs
from modelyard.changes.events import Events
from modelyard.changes.hotcache import EpochCache
from modelyard.changes.outage import OutageCache
from modelyard.config import Settings
from modelyard.jobs.service import JobQueue
from modelyard.observability.metrics import Metrics
from modelyard.predictions.log.writer import PredictionLog
from modelyard.predictions.predictor import Predictor
from modelyard.predictions.targets import Target
from modelyard.ratelimit import RateLimiter
from modelyard.serving.probe import Prober
from modelyard.webhooks.delivery import DeliveryWorker

if TYPE_CHECKING:  # the live events module serves routes that depend on this one
    from modelyard.audit.live import LiveFeed

CheckStatus = Literal["ok", "down", "disabled"]


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    passwords: PasswordHasher
    tokens: TokenService
    rate_limiter: RateLimiter
    failures: FailureLimit
    store: ArtifactStore
    prober: Prober
    metrics: Metrics
    prediction_log: PredictionLog
    predictor: Predictor
    outage_cache: OutageCache[Hashable, Any]
    epochs: Epochs
    events: Events
    caller_cache: EpochCache[str, Caller]
    target_cache: EpochCache[Hashable, Target]
    audit_log: AuditLog
    # The event streams of this process and their one poller.
    live: LiveFeed
    redis: Redis | None = None
    # This process's webhook delivery worker (None: a serving replica, or delivery turned off).
    webhooks: DeliveryWorker | None = None

    # The OpenID provider of single sign-on (None: not configured).
    oidc: OidcClient | None = None

    # Where batch jobs go (None on a `serving` replica, which has no batch job routes).
    batch_jobs: JobQueue | None = None
    shutting_down: bool = False
    readiness: tuple[float, dict[str, CheckStatus]] | None = field(default=None, repr=False)


def app_state(conn: HTTPConnection) -> AppState:
    """Return the components of the app serving this request."""
    state: AppState = conn.app.state.modelyard
    return state


async def state_dependency(conn: HTTPConnection) -> AppState:
    """Return the app's components (async: FastAPI runs a sync dependency in a thread pool)."""
    state: AppState = conn.app.state.modelyard
    return state


StateDep = Annotated[AppState, Depends(state_dependency)]
