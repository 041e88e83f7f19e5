"""`/health` (the process answers) and `/health/ready` (its dependencies answer)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Coroutine
from typing import Annotated, Any, Literal

from fastapi import Depends, Request, Response
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from modelyard.auth.deps import api_key_scheme, bearer_scheme, check_credential, credentials
from modelyard.edge.routing import make_router
from modelyard.errors import ModelyardError
from modelyard.state import AppState, CheckStatus, StateDep

log = logging.getLogger(__name__)
router = make_router(tags=["operations"])

CHECK_TIMEOUT_SECONDS = 2.0
READY_CACHE_SECONDS = 2.0


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
    request: Request,
    state: StateDep,
    response: Response,
    bearer: Annotated[str | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> Ready:
    """Answer 200 while the database and artifact store answer, 503 otherwise (Redis does not
    count). Anyone gets `{"status": ...}`; admins and the metrics scrape token also get `checks`,
    the state of each dependency."""
    if state.shutting_down:
        response.status_code = 503
        return Ready(status="shutting down")
    now = time.monotonic()
    # Cached briefly: probes from every load balancer must not become load on the database.
    if state.readiness is None or now - state.readiness[0] >= READY_CACHE_SECONDS:
        state.readiness = (now, await _check(state))
    checks = state.readiness[1]
    status: Literal["ok", "unavailable"] = "ok"
    if checks["database"] != "ok" or checks["artifact_store"] != "ok":
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        status = "unavailable"
    # Which of our dependencies is down is of use to an attacker timing one: operators only.
    shown = (
        checks if (bearer or api_key) and await _may_see_checks(state, bearer, api_key) else None
    )
    return Ready(status=status, checks=shown)


async def _may_see_checks(state: AppState, bearer: str | None, api_key: str | None) -> bool:
    """Tell whether the caller is the scrape token or an admin; never fail readiness over it."""
    token = state.settings.metrics_token
    if (
        token is not None
        and bearer is not None
        and hmac.compare_digest(bearer.encode(), token.get_secret_value().encode())
    ):
        return True
    api_key, bearer = credentials(api_key, bearer)
    try:
        async with state.sessions() as db:
            caller, _ = await asyncio.wait_for(
                check_credential(state, db, api_key, bearer), CHECK_TIMEOUT_SECONDS
            )
    except (ModelyardError, SQLAlchemyError, OSError, TimeoutError):
        # A bad credential or the database down: the answer is the summary, not an error.
        return False
    return caller.user.is_admin


async def _check(state: AppState) -> dict[str, CheckStatus]:
    probes = {"database": _database(state), "artifact_store": _artifact_store(state)}
    if state.redis is not None:
        probes["redis"] = _redis(state.redis)
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


async def _database(state: AppState) -> None:
    async with state.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _artifact_store(state: AppState) -> None:
    await state.store.check()


async def _redis(redis: Redis) -> None:
    await redis.ping()
