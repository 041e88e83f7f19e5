"""Live servers for client tests: an account with an API key on one (make_login), a server on
each database (live_on_each_database)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import delete

from modelyard.db.engine import make_engine
from modelyard.db.tables import Base
from tests.support.factories import DEFAULT_PASSWORD
from tests.support.servers import ServerProcess, running_server


@dataclass(frozen=True)
class Login:
    url: str
    email: str
    password: str
    api_key: str
    access_token: str


LIVE_SETTINGS = {
    "secret_key": "client-tests-secret-key-that-is-long-enough",
    "auth_rate_limit_per_minute": "0",
    "predict_rate_limit_per_minute": "0",
    "prediction_log_flush_ms": "20",
    # One process, so one in-process batch job worker: jobs run one at a time, in order.
    "workers": "1",
    # Small chunks: a small file still goes through several chunks and progress commits.
    "batch_job_chunk_rows": "7",
    "batch_job_poll_seconds": "0.05",
}


def live_on_each_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A live server on `request.param`'s database: "sqlite" (a file of its own) or
    "postgresql" (this run's database, its rows deleted when the server has stopped, as the
    `engine` fixture does). For a module's `live` fixture with those params."""
    dialect = str(request.param)
    database_url = None
    if dialect == "postgresql":
        database_url = str(request.getfixturevalue("postgresql_url"))
    settings = dict(LIVE_SETTINGS) | ({"database_url": database_url} if database_url else {})
    try:
        with running_server(tmp_path_factory.mktemp(f"live-{dialect}"), **settings) as server:
            yield server
            server.stop()
    finally:
        if database_url is not None:
            asyncio.run(_delete_rows(database_url))


async def _delete_rows(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                await conn.execute(delete(table))
    finally:
        await engine.dispose()


def make_login(url: str) -> Login:
    """Register an account on the server, log in, and make an API key."""
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    with httpx.Client(base_url=url) as http:
        registered = http.post(
            "/api/v1/auth/register", json={"email": email, "password": DEFAULT_PASSWORD}
        )
        assert registered.status_code == 201, registered.text
        tokens = http.post(
            "/api/v1/auth/login", json={"email": email, "password": DEFAULT_PASSWORD}
        ).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        body = {"name": "tests", "scopes": ["read", "predict", "write"]}  # as `modelyard login`
        key = http.post("/api/v1/api-keys", json=body, headers=headers)
        assert key.status_code == 201, key.text
    return Login(url, email, DEFAULT_PASSWORD, key.json()["key"], tokens["access_token"])
