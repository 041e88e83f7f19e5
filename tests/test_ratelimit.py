"""Rate limits on the auth endpoints: 429 with Retry-After, per process or shared over Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.app import create_app
from modelyard.config import Settings
from tests.conftest import make_settings, service_missing

REDIS_URL = "redis://127.0.0.1:6379/0"
LOGIN = "/api/v1/auth/login"
BAD_LOGIN = {"email": "nobody@example.com", "password": "wrong-password"}


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture
async def redis_url() -> str:
    redis = Redis.from_url(REDIS_URL)
    try:
        await redis.ping()
    except OSError as exc:
        service_missing("Redis", REDIS_URL, exc)
    finally:
        await redis.aclose()
    return REDIS_URL


async def test_login_is_rate_limited_per_client(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    settings = make_settings(tmp_path, database_url, auth_rate_limit_per_minute=3)
    async with serve(settings) as client:
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
    transport_kwargs = {"client": (address, 1234)}
    apps = [create_app(settings), create_app(settings)]
    async with LifespanManager(apps[0]), LifespanManager(apps[1]):
        clients = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, **transport_kwargs),  # type: ignore[arg-type]
                base_url="http://testserver",
            )
            for app in apps
        ]
        first = (await clients[0].post(LOGIN, json=BAD_LOGIN)).status_code
        second = (await clients[1].post(LOGIN, json=BAD_LOGIN)).status_code
        third = (await clients[0].post(LOGIN, json=BAD_LOGIN)).status_code
        for client in clients:
            await client.aclose()
    assert (first, second, third) == (401, 401, 429)
