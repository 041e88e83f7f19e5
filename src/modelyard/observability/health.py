"""`/health` (the process answers) and `/health/ready` (its dependencies answer)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Coroutine, Hashable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Response
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from modelyard.artifacts.deps import StoreDep
from modelyard.artifacts.store import ArtifactStore
from modelyard.auth.deps import (
    TokensDep,
    api_key_scheme,
    bearer_scheme,
    credentials,
    verify_credential,
)
from modelyard.auth.tokens import TokenService
from modelyard.changes.deps import OutageCacheDep
from modelyard.changes.outage import OutageCache
from modelyard.config import Settings
from modelyard.db.deps import EngineDep, SessionsDep
from modelyard.deps import RedisDep, SettingsDep, component
from modelyard.edge.routing import make_router
from modelyard.errors import ModelyardError

log = logging.getLogger(__name__)
router = make_router(tags=["operations"])

CHECK_TIMEOUT_SECONDS = 2.0
READY_CACHE_SECONDS = 2.0

CheckStatus = Literal["ok", "down", "disabled"]


@dataclass
class Readiness:
    """Whether this process takes traffic: not once it is shutting down; and the state of its
    dependencies when last checked (`checked`: when, by the monotonic clock, and what)."""

    shutting_down: bool = False
    checked: tuple[float, dict[str, CheckStatus]] | None = None


ReadinessDep = Annotated[Readiness, Depends(component("readiness"))]


class Live(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ok", "unavailable", "shutting down"]
    checks: dict[str, CheckStatus] | None = Field(
        default=None,
        description="each dependency's state: only for admins and the metrics scrape token",
    )


@router.get("/health", response_model=Live)
async def live() -> Live:
    """Answer while the process runs; calls no dependency, so an outage never restarts it."""
    return Live()


@router.get(
    "/health/ready",
    response_model=Ready,
    response_model_exclude_none=True,
    responses={503: {"model": Ready}},
)
async def ready(
    readiness: ReadinessDep,
    settings: SettingsDep,
    engine: EngineDep,
    sessions: SessionsDep,
    store: StoreDep,
    redis: RedisDep,
    tokens: TokensDep,
    outage: OutageCacheDep,
    response: Response,
    bearer: Annotated[str | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> Ready:
    """Answer 200 while the database and artifact store answer, 503 otherwise (Redis does not
    count). Anyone gets `{"status": ...}`; admins and the metrics scrape token also get `checks`,
    the state of each dependency."""
    if readiness.shutting_down:
        response.status_code = 503
        return Ready(status="shutting down")
    now = time.monotonic()
    # Cached briefly: probes from every load balancer must not become load on the database.
    if readiness.checked is None or now - readiness.checked[0] >= READY_CACHE_SECONDS:
        readiness.checked = (now, await _check(engine, store, redis))
    checks = readiness.checked[1]
    status: Literal["ok", "unavailable"] = "ok"
    if checks["database"] != "ok" or checks["artifact_store"] != "ok":
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        status = "unavailable"
    # Which of our dependencies is down is of use to an attacker timing one: operators only.
    shown = (
        checks
        if (bearer or api_key)
        and await _may_see_checks(settings, sessions, bearer, api_key, tokens=tokens, outage=outage)
        else None
    )
    return Ready(status=status, checks=shown)


async def _may_see_checks(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    bearer: str | None,
    api_key: str | None,
    *,
    tokens: TokenService,
    outage: OutageCache[Hashable, Any],
) -> bool:
    """Tell whether the caller is the scrape token or an admin; never fail readiness over it."""
    token = settings.metrics_token
    if (
        token is not None
        and bearer is not None
        and hmac.compare_digest(bearer.encode(), token.get_secret_value().encode())
    ):
        return True
    api_key, bearer = credentials(api_key, bearer)
    try:
        async with sessions() as db:
            caller, _ = await asyncio.wait_for(
                verify_credential(db, api_key, bearer, tokens=tokens, outage=outage),
                CHECK_TIMEOUT_SECONDS,
            )
    except (ModelyardError, SQLAlchemyError, OSError, TimeoutError):
        # A bad credential or the database down: the answer is the summary, not an error.
        return False
    return caller.user.is_admin


async def _check(
    engine: AsyncEngine, store: ArtifactStore, redis: Redis | None
) -> dict[str, CheckStatus]:
    probes = {"database": _database(engine), "artifact_store": store.check()}
    if redis is not None:
        probes["redis"] = _redis(redis)
    results = await asyncio.gather(*(_probe(name, check) for name, check in probes.items()))
    checks: dict[str, CheckStatus] = dict(zip(probes, results, strict=True))
    checks.setdefault("redis", "disabled")
    return checks


async def _probe(name: str, check: Coroutine[Any, Any, None]) -> CheckStatus:
    try:
        await asyncio.wait_for(check, CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        log.warning("readiness_check_failed", extra={"check": name, "error": type(exc).__name__})
        return "down"
    return "ok"


async def _database(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _redis(redis: Redis) -> None:
    await redis.ping()
