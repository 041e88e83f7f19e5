"""`/health` (the process answers) and `/health/ready` (its dependencies answer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis

from modelyard.app import create_app
from modelyard.config import Settings
from modelyard.state import AppState
from tests.support.factories import Account, lifespan
from tests.support.services import service_missing
from tests.support.settings import make_settings

REDIS_URL = "redis://127.0.0.1:6379/0"
CLOSED_REDIS_URL = "redis://127.0.0.1:1/0"
CLOSED_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:1/x"
SCRAPE_TOKEN = "scrape-token-for-the-health-tests"
SCRAPER = {"Authorization": f"Bearer {SCRAPE_TOKEN}"}


def unreachable_database_url(dialect: str, tmp_path: Path) -> str:
    """Return a database URL of `dialect` that cannot be connected to."""
    if dialect == "postgresql":
        return CLOSED_POSTGRES_URL
    return f"sqlite+aiosqlite:///{tmp_path / 'no-such-folder' / 'modelyard.db'}"


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app built from `settings` in its lifespan."""
    app = create_app(settings)
    async with lifespan(app), client_for(app) as client:
        yield client


async def require_redis() -> None:
    """Skip (fail in CI) unless the test Redis answers."""
    redis = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await redis.ping()
    except Exception as exc:
        service_missing("Redis", REDIS_URL, exc)
    finally:
        await redis.aclose()


async def test_live_answers_ok_without_the_database(tmp_path: Path) -> None:
    async with serve(make_settings(tmp_path, CLOSED_POSTGRES_URL)) as client:
        response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_reports_every_check_ok_to_an_admin(
    client: httpx.AsyncClient, admin: Account
) -> None:
    response = await client.get("/health/ready", headers=admin.headers)

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "artifact_store": "ok", "redis": "disabled"},
    }


async def test_ready_is_503_naming_the_database_when_it_is_down(
    dialect: str, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path, unreachable_database_url(dialect, tmp_path), metrics_token=SCRAPE_TOKEN
    )
    async with serve(settings) as client:
        response = await client.get("/health/ready", headers=SCRAPER)

    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "down", "artifact_store": "ok", "redis": "disabled"},
    }


async def test_ready_reports_redis_ok_when_configured(tmp_path: Path, database_url: str) -> None:
    await require_redis()
    async with serve(
        make_settings(tmp_path, database_url, redis_url=REDIS_URL, metrics_token=SCRAPE_TOKEN)
    ) as client:
        response = await client.get("/health/ready", headers=SCRAPER)

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "artifact_store": "ok", "redis": "ok"},
    }


async def test_ready_stays_200_when_redis_is_down(tmp_path: Path, database_url: str) -> None:
    async with serve(
        make_settings(
            tmp_path, database_url, redis_url=CLOSED_REDIS_URL, metrics_token=SCRAPE_TOKEN
        )
    ) as client:
        response = await client.get("/health/ready", headers=SCRAPER)

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "artifact_store": "ok", "redis": "down"},
    }


async def test_ready_is_503_once_shutdown_has_begun(app: FastAPI) -> None:
    state: AppState = app.state.modelyard
    state.readiness.shutting_down = True

    async with client_for(app) as client:
        response = await client.get("/health/ready")

    assert response.status_code == 503
    assert response.json()["status"] == "shutting down"


async def test_ready_is_503_after_the_lifespan_has_ended(tmp_path: Path, database_url: str) -> None:
    app = create_app(make_settings(tmp_path, database_url))
    async with lifespan(app), client_for(app) as client:
        assert (await client.get("/health/ready")).status_code == 200

    async with client_for(app) as client:
        response = await client.get("/health/ready")

    assert response.status_code == 503
    assert response.json()["status"] == "shutting down"


async def test_ready_is_503_naming_the_artifact_store_when_s3_is_down(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        storage_url="s3://modelyard-test/x",
        s3_endpoint_url="http://127.0.0.1:1",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        metrics_token=SCRAPE_TOKEN,
    )
    async with serve(settings) as client:
        response = await client.get("/health/ready", headers=SCRAPER)

    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "artifact_store": "down", "redis": "disabled"},
    }


async def test_ready_reports_an_s3_store_ok(
    tmp_path: Path, database_url: str, storage_settings: dict[str, object]
) -> None:
    async with serve(
        make_settings(tmp_path, database_url, **storage_settings, metrics_token=SCRAPE_TOKEN)
    ) as client:
        response = await client.get("/health/ready", headers=SCRAPER)

    assert response.status_code == 200
    assert response.json()["checks"]["artifact_store"] == "ok"


async def test_ready_shows_only_the_status_without_credentials(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_shows_only_the_status_to_a_user_who_is_not_admin(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await client.get("/health/ready", headers=user.headers)

    assert response.json() == {"status": "ok"}


async def test_ready_without_credentials_names_no_failing_dependency(
    dialect: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, unreachable_database_url(dialect, tmp_path))
    async with serve(settings) as client:
        anonymous = await client.get("/health/ready")
        with_a_bad_token = await client.get(
            "/health/ready", headers={"Authorization": "Bearer not-a-token"}
        )

    assert anonymous.status_code == 503
    assert int(anonymous.headers["retry-after"]) > 0
    assert anonymous.json() == {"status": "unavailable"}
    assert with_a_bad_token.status_code == 503
    assert with_a_bad_token.json() == {"status": "unavailable"}
