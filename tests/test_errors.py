"""Every error answers RFC 9457 problem+json, and nothing internal reaches the client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.app import create_app
from modelyard.config import Settings
from modelyard.db.tables import User
from tests.conftest import make_settings
from tests.factories import Account

PROBLEM_JSON = "application/problem+json"
PROBLEM_KEYS = {"type", "title", "status", "detail"}
SMALL_LIMIT = 1024
BIG_EMAIL = "big@example.com"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Check that `response` is a problem+json document with `status`, and return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert set(body) >= PROBLEM_KEYS
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    return body


def unreachable_database_url(dialect: str, tmp_path: Path) -> str:
    """Return a database URL of `dialect` that cannot be connected to."""
    if dialect == "postgresql":
        return "postgresql+asyncpg://postgres@127.0.0.1:1/x"
    return f"sqlite+aiosqlite:///{tmp_path / 'no-such-folder' / 'modelyard.db'}"


@asynccontextmanager
async def serve(
    settings: Settings, setup: Callable[[FastAPI], None] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app built from `settings` (changed by `setup` first) in its lifespan."""
    app = create_app(settings)
    if setup is not None:
        setup(app)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_unknown_route_is_problem_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/no-such-thing")

    body = assert_problem(response, 404)
    assert body["title"] == "Not Found"


async def test_wrong_method_is_problem_405(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/v1/auth/login")

    body = assert_problem(response, 405)
    assert body["title"] == "Method Not Allowed"
    assert response.headers["allow"] == "POST"


async def test_validation_error_is_problem_422_listing_errors(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register", json={"email": "ada@example.com", "password": "short"}
    )

    body = assert_problem(response, 422)
    assert body["errors"]
    for error in body["errors"]:
        assert isinstance(error["loc"], list)
        assert isinstance(error["msg"], str)
        assert error["msg"]
    assert ["body", "password"] in [error["loc"] for error in body["errors"]]


async def test_validation_error_does_not_echo_the_password(client: httpx.AsyncClient) -> None:
    password = "Zq7#kP!"  # 7 characters: one too few

    response = await client.post(
        "/api/v1/auth/register", json={"email": "ada@example.com", "password": password}
    )

    assert_problem(response, 422)
    assert password not in response.text


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e309"])
async def test_non_finite_number_is_422_not_500(client: httpx.AsyncClient, literal: str) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        content=f'{{"email": "a@b.co", "password": {literal}}}',
        headers={"Content-Type": "application/json"},
    )

    body = assert_problem(response, 422)
    assert body["errors"]
    assert all(isinstance(error["loc"], list) for error in body["errors"])


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        content=b'{"email": "a@b.co", "password": ',
        headers={"Content-Type": "application/json"},
    )

    body = assert_problem(response, 422)
    assert body["errors"]


def _oversized_register_body() -> bytes:
    head = f'{{"email": "{BIG_EMAIL}", "password": "long-enough-password"'.encode()
    return head + b" " * (2 * SMALL_LIMIT) + b"}"


async def test_body_over_limit_by_content_length_is_problem_413(
    tmp_path: Path, database_url: str, db: AsyncSession
) -> None:
    settings = make_settings(tmp_path, database_url, max_request_bytes=SMALL_LIMIT)
    async with serve(settings) as client:
        response = await client.post(
            "/api/v1/auth/register",
            content=_oversized_register_body(),
            headers={"Content-Type": "application/json"},
        )

    assert response.request.headers["content-length"] == str(len(_oversized_register_body()))
    body = assert_problem(response, 413)
    assert str(SMALL_LIMIT) in body["detail"]
    assert (await db.execute(select(User).where(User.email == BIG_EMAIL))).first() is None


async def test_chunked_body_over_limit_is_problem_413(
    tmp_path: Path, database_url: str, db: AsyncSession
) -> None:
    payload = _oversized_register_body()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 256):
            yield payload[start : start + 256]

    settings = make_settings(tmp_path, database_url, max_request_bytes=SMALL_LIMIT)
    async with serve(settings) as client:
        response = await client.post(
            "/api/v1/auth/register",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )

    assert "content-length" not in response.request.headers
    body = assert_problem(response, 413)
    assert str(SMALL_LIMIT) in body["detail"]
    assert (await db.execute(select(User).where(User.email == BIG_EMAIL))).first() is None


async def test_unexpected_exception_is_generic_500_quoting_the_request_id(
    tmp_path: Path, database_url: str
) -> None:
    async def boom() -> None:
        raise RuntimeError("secret internal detail /srv/path")

    def add_boom(app: FastAPI) -> None:
        app.add_api_route("/boom", boom)

    async with serve(make_settings(tmp_path, database_url), add_boom) as client:
        response = await client.get("/boom", headers={"X-Request-ID": "boom-request-1"})

    body = assert_problem(response, 500)
    assert response.headers["x-request-id"] == "boom-request-1"
    assert "boom-request-1" in body["detail"]
    for leak in ("secret internal detail", "/srv/path", "RuntimeError", "Traceback", ".py"):
        assert leak not in response.text


async def test_database_down_makes_login_503_with_retry_after(dialect: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, unreachable_database_url(dialect, tmp_path))
    async with serve(settings) as client:
        response = await client.post(
            "/api/v1/auth/login", json={"email": "a@b.co", "password": "long-enough-password"}
        )

    body = assert_problem(response, 503)
    assert int(response.headers["retry-after"]) > 0
    assert "127.0.0.1" not in body["detail"]
    assert str(tmp_path) not in response.text


async def test_text_the_database_cannot_store_is_a_422_not_a_500(
    client: httpx.AsyncClient, user: Account, dialect: str
) -> None:
    response = await client.post(
        "/api/v1/experiments", json={"name": "nul\u0000inside"}, headers=user.headers
    )
    if dialect == "postgresql":  # PostgreSQL text cannot hold NUL; SQLite stores it
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert "INSERT" not in response.text
    else:
        assert response.status_code == 201
