"""Rate limits on the auth endpoints: 429 with Retry-After, per process or shared over Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.app import create_app
from modelyard.errors import RateLimited
from modelyard.ratelimit import RateLimiter, SharedWindows
from tests.support import factories
from tests.support.factories import lifespan
from tests.support.settings import make_settings

LOGIN = "/api/v1/auth/login"
BAD_LOGIN = {"email": "nobody@example.com", "password": "wrong-password"}


async def test_login_is_rate_limited_per_client(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    settings = make_settings(tmp_path, database_url, auth_rate_limit_per_minute=3)
    async with factories.serve(settings) as client:
        statuses = [(await client.post(LOGIN, json=BAD_LOGIN)).status_code for _ in range(4)]
        limited = await client.post(LOGIN, json=BAD_LOGIN)
    assert statuses[:3] == [401, 401, 401]
    assert statuses[3] == 429
    assert limited.headers["content-type"] == "application/problem+json"
    assert 1 <= int(limited.headers["retry-after"]) <= 60


async def test_rate_limit_is_shared_by_replicas_through_redis(
    tmp_path: Path, database_url: str, engine: AsyncEngine, redis_url: str
) -> None:
    # A fresh key space per run: the shared Redis may hold counts from other runs.
    settings = make_settings(
        tmp_path, database_url, auth_rate_limit_per_minute=2, redis_url=redis_url
    )
    address = f"10.{uuid.uuid4().int % 250}.0.1"
    # The per-account failure count is shared through Redis too: an email of this run's own.
    bad_login = {**BAD_LOGIN, "email": f"nobody-{uuid.uuid4().hex[:8]}@example.com"}
    transport_kwargs = {"client": (address, 1234)}
    apps = [create_app(settings), create_app(settings)]
    async with lifespan(apps[0]), lifespan(apps[1]):
        clients = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, **transport_kwargs),  # type: ignore[arg-type]
                base_url="http://testserver",
            )
            for app in apps
        ]
        first = (await clients[0].post(LOGIN, json=bad_login)).status_code
        second = (await clients[1].post(LOGIN, json=bad_login)).status_code
        third = (await clients[0].post(LOGIN, json=bad_login)).status_code
        for client in clients:
            await client.aclose()
    assert (first, second, third) == (401, 401, 429)


async def granted(limiter: RateLimiter, key: str, *, limit: int, times: int) -> int:
    """Return how many of `times` hits on `key` the limiter lets through."""
    through = 0
    for _ in range(times):
        try:
            await limiter.take(key, limit=limit, window_seconds=3600)
        except RateLimited:
            continue
        through += 1
    return through


@pytest.mark.parametrize("limit", [10, 1000])
async def test_replicas_together_never_take_more_than_the_limit(
    redis_url: str, tmp_path: Path, limit: int
) -> None:
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    replicas = [RateLimiter(c, SharedWindows(tmp_path / str(i))) for i, c in enumerate(clients)]
    key = f"predict:test-{uuid.uuid4().hex}"
    try:
        through = 0
        for _ in range(limit):  # interleaved: each replica asks for half again as much
            for replica in replicas:
                through += await granted(replica, key, limit=limit, times=1)
    finally:
        for replica, client in zip(replicas, clients, strict=True):
            replica.close()
            await client.aclose()
    # Blocks a replica reserved but did not spend are lost for the window: at most one each.
    block = max(1, limit // 100)
    assert limit - 2 * block <= through <= limit


async def test_take_counts_on_the_host_without_redis(tmp_path: Path) -> None:
    workers = [
        RateLimiter(None, SharedWindows(tmp_path)),
        RateLimiter(None, SharedWindows(tmp_path)),
    ]
    key = f"predict:{uuid.uuid4().hex}"
    through = [await granted(w, key, limit=5, times=4) for w in workers]
    for worker in workers:
        worker.close()
    assert through == [4, 1]


async def test_password_failures_per_account_are_shared_through_redis(
    tmp_path: Path, database_url: str, engine: AsyncEngine, redis_url: str
) -> None:
    # Two hosts (two data folders): only Redis can make them count together.
    apps = [
        create_app(
            make_settings(
                tmp_path / host, database_url, password_failures_per_account=2, redis_url=redis_url
            )
        )
        for host in ("a", "b")
    ]
    bad_login = {"email": f"nobody-{uuid.uuid4().hex[:8]}@example.com", "password": "guess"}
    async with lifespan(apps[0]), lifespan(apps[1]):
        statuses = []
        for app, address in zip(
            apps * 2, ["10.1.1.1", "10.2.2.2", "10.3.3.3", "10.4.4.4"], strict=True
        ):
            transport = httpx.ASGITransport(app=app, client=(address, 1234))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                statuses.append((await client.post(LOGIN, json=bad_login)).status_code)
    assert statuses == [401, 401, 429, 429]
