"""`/health` (the process answers) and `/health/ready` (its dependencies answer)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, Literal

from fastapi import Response
from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy import text

from modelyard.routing import make_router
from modelyard.state import AppState, CheckStatus, StateDep

log = logging.getLogger(__name__)
router = make_router(tags=["operations"])

CHECK_TIMEOUT_SECONDS = 2.0
READY_CACHE_SECONDS = 2.0


class Live(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ok", "unavailable", "shutting down"]
    checks: dict[str, CheckStatus]


@router.get("/health", response_model=Live)
async def live() -> Live:
    """Answer while the process runs; calls no dependency, so an outage never restarts it."""
    return Live()


@router.get("/health/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(state: StateDep, response: Response) -> Ready:
    """Report whether the database and artifact store answer (Redis is reported, not required)."""
    if state.shutting_down:
        response.status_code = 503
        return Ready(status="shutting down", checks={})
    now = time.monotonic()
    # Cached briefly: probes from every load balancer must not become load on the database.
    if state.readiness is None or now - state.readiness[0] >= READY_CACHE_SECONDS:
        state.readiness = (now, await _check(state))
    checks = state.readiness[1]
    if checks["database"] != "ok" or checks["artifact_store"] != "ok":
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return Ready(status="unavailable", checks=checks)
    return Ready(status="ok", checks=checks)


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
