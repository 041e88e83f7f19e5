"""A live `modelyard serve` per test module (SQLite; `live_on_each_database` for modules that
run on PostgreSQL too), an account and an API key on it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete

from modelyard.db.engine import make_engine
from modelyard.db.tables import Base
from tests.factories import DEFAULT_PASSWORD
from tests.servers import ServerProcess, running_server
from tests.serving import legit


@dataclass(frozen=True)
class Login:
    url: str
    email: str
    password: str
    api_key: str
    access_token: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module's tests (each test uses an account of its own)."""
    folder = tmp_path_factory.mktemp("live")
    with running_server(
        folder,
        secret_key="client-tests-secret-key-that-is-long-enough",
        auth_rate_limit_per_minute="0",
        predict_rate_limit_per_minute="0",
        max_upload_bytes=str(3 * 1024 * 1024),
        prediction_log_flush_ms="20",
    ) as server:
        yield server
        server.stop()


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


@pytest.fixture
def login(live: ServerProcess) -> Login:
    return make_login(live.url)


@pytest.fixture(scope="session")
def iris_skops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An iris logistic regression saved with skops."""
    return legit.write_skops(legit.iris_lr(), tmp_path_factory.mktemp("models") / "iris.skops")


@pytest.fixture(autouse=True)
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the stored login of every client test in its own folder, never the user's."""
    path = tmp_path / "config" / "credentials.json"
    monkeypatch.setenv("MODELYARD_CLIENT_CONFIG", str(path))
    return path
