"""Every error answers RFC 9457 problem+json, and nothing internal reaches the client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.app import create_app
from modelyard.config import Settings
from modelyard.db.tables import User
from modelyard.errors import error_response, is_dependency_down
from modelyard.state import AppState
from tests.support.factories import Account, lifespan
from tests.support.settings import make_settings

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
    async with lifespan(app):
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


async def test_405_allows_every_method_the_path_serves(client: httpx.AsyncClient) -> None:
    # Starlette names only the methods of the first route of the path it tried.
    response = await client.put("/api/v1/models/some-model")

    assert_problem(response, 405)
    assert response.headers["allow"] == "DELETE, GET, PATCH"


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


class _DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate} at /srv/db")
        self.sqlstate = sqlstate


@pytest.mark.parametrize("sqlstate", ["55000", "55P03", "57P01", "57P03", "53300", "08006"])
def test_server_side_sqlstates_mean_the_dependency_is_down(sqlstate: str) -> None:
    exc = sa_exc.DBAPIError("SELECT 1", None, _DriverError(sqlstate))

    response = error_response(exc, "/api/v1/models")

    assert response is not None
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert b"SELECT" not in response.body
    assert b"/srv/db" not in response.body


@pytest.mark.parametrize("sqlstate", ["23505", "22P02", "42P01"])
def test_other_sqlstates_are_not_an_outage(sqlstate: str) -> None:
    assert not is_dependency_down(sa_exc.DBAPIError("SELECT 1", None, _DriverError(sqlstate)))


# Statements that make a real PostgreSQL answer with a "not now" SQLSTATE.
_UNAVAILABLE_STATEMENTS = {
    # object_not_in_prerequisite_state: currval before nextval in this session.
    "55000": ["CREATE TEMP SEQUENCE edge_seq", "SELECT currval('edge_seq')"],
    # query_canceled by statement_timeout.
    "57014": ["SET LOCAL statement_timeout = '1ms'", "SELECT pg_sleep(5)"],
    # read_only_sql_transaction: a write reaching a standby.
    "25006": ["SET TRANSACTION READ ONLY", "CREATE TABLE edge_never (i int)"],
}


@pytest.mark.parametrize("sqlstate", [*_UNAVAILABLE_STATEMENTS, "55P03"])
async def test_real_postgresql_not_now_errors_answer_503(
    tmp_path: Path, postgresql_url: str, sqlstate: str
) -> None:
    async def run() -> None:
        state = app_state_of(app)
        async with state.engine.connect() as conn, conn.begin():
            if sqlstate == "55P03":
                # lock_not_available: another transaction holds the lock, NOWAIT.
                async with state.engine.connect() as other, other.begin():
                    await other.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
                    await conn.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE NOWAIT"))
            for statement in _UNAVAILABLE_STATEMENTS.get(sqlstate, []):
                await conn.execute(text(statement))

    app = create_app(make_settings(tmp_path, postgresql_url))
    app.add_api_route("/pg", run)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/pg")

    body = assert_problem(response, 503)
    assert int(response.headers["retry-after"]) > 0
    for leak in ("SELECT", "LOCK", "CREATE", "edge_", "sqlstate", sqlstate):
        assert leak not in response.text
    assert body["detail"].startswith("a service Modelyard depends on is unavailable")


def app_state_of(app: FastAPI) -> AppState:
    state: AppState = app.state.modelyard
    return state
