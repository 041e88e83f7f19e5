"""Shared fixtures: settings on a temp data dir, both databases, the app in its lifespan, users."""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import delete, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from modelyard.app import create_app
from modelyard.config import Settings
from modelyard.db import migrate
from modelyard.db.engine import make_engine, make_sessionmaker
from modelyard.db.tables import Base
from modelyard.serving import probehost
from modelyard.serving.warmup import DEFAULT_FRAMEWORKS, warm_up
from tests.serving import legit
from tests.support import factories
from tests.support.factories import lifespan
from tests.support.services import service_missing
from tests.support.settings import (
    POSTGRES_ADMIN_URL,
    PROBE_SOCKET,
    REDIS_TEST_URL,
    S3_TEST_BUCKET,
    S3_TEST_CREDENTIALS,
    make_settings,
)
from tests.support.tcpproxy import TcpProxy


async def _postgres_admin(sql: str) -> None:
    engine = make_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's MODELYARD_* variables and .env file out of every test."""
    for name in list(os.environ):
        if name.startswith("MODELYARD_") and name != "MODELYARD_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session", autouse=True)
def _probe_process() -> Iterator[None]:
    """Hold the run's probe process from the first test to the last (it exits after its last
    lease: without this one, between two tests); import what an app's start-up imports."""
    started = probehost.ensure_running(PROBE_SOCKET)
    # An app's lifespan imports scikit-learn and skops before it serves (a second or two, more
    # on a busy machine): done once here, so no test's start-up waits for it.
    warm_up(DEFAULT_FRAMEWORKS)
    lease, _ = probehost.lease(PROBE_SOCKET)
    yield
    lease.close()
    # An app whose lifespan never ended leaves its prober to the garbage collector (which
    # closes its lease), but every app start-up's `gc.freeze()` (serving.warmup) hides the
    # garbage of the tests before it from the collector: unfreeze, so it is collected.
    gc.unfreeze()
    gc.collect()
    if started is not None:
        started.wait(timeout=30)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite database for this run, its schema made by the migrations."""
    path = tmp_path_factory.mktemp("sqlite") / "modelyard.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """A PostgreSQL database of this run's own (dropped at the end), made by the migrations."""
    name = f"modelyard_test_{uuid.uuid4().hex[:12]}"
    address = make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)
    try:
        asyncio.run(_postgres_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, Exception) as exc:
        service_missing("PostgreSQL", address, exc)
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, dialect: str) -> str:
    return str(request.getfixturevalue(f"{dialect}_url"))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the test database; every row is deleted after the test."""
    engine = make_engine(database_url)
    yield engine
    async with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            await conn.execute(delete(table))
    await engine.dispose()


@pytest.fixture
async def db(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with make_sessionmaker(engine)() as session:
        yield session


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
async def redis_url() -> str:
    """The test Redis server's URL (the test is skipped, in CI failed, when it is not running)."""
    redis = Redis.from_url(REDIS_TEST_URL)
    try:
        await redis.ping()
    except OSError as exc:
        service_missing("Redis", REDIS_TEST_URL, exc)
    finally:
        await redis.aclose()
    return REDIS_TEST_URL


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    """A proxy to the test Redis server that the test can cut and restore."""
    target = urlsplit(redis_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.aclose()


@pytest.fixture
async def pg_proxy() -> AsyncIterator[TcpProxy]:
    """A proxy to the test PostgreSQL server that the test can cut and restore."""
    target = make_url(POSTGRES_ADMIN_URL)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.aclose()


@pytest.fixture
def proxied_postgresql_url(postgresql_url: str, pg_proxy: TcpProxy) -> str:
    """The URL of this run's PostgreSQL database, through `pg_proxy`."""
    url = make_url(postgresql_url).set(host="127.0.0.1", port=pg_proxy.port)
    return url.render_as_string(hide_password=False)


@pytest.fixture
async def app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with lifespan(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def user(client: httpx.AsyncClient) -> factories.Account:
    return await factories.make_account(client)


@pytest.fixture
async def other_user(client: httpx.AsyncClient) -> factories.Account:
    return await factories.make_account(client)


@pytest.fixture
async def admin(client: httpx.AsyncClient, app: FastAPI) -> factories.Account:
    return await factories.make_account(client, admin_of=app)


# --- Artifact storage (artifacts owner) ------------------------------------------------------
# `s3_endpoint`: a moto S3 server on loopback for the whole run; `s3_bucket`: a bucket in it.
# `storage` (params "local", "s3") picks a backend; `storage_settings` are the make_settings
# overrides for it (S3 objects under a prefix of the test's own); `store` is that backend built
# by make_store on `tmp_path / "data"`. To run app tests on both backends, override `settings`
# in a package conftest: `make_settings(tmp_path, database_url, **storage_settings)`.


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of an S3-protocol server (moto) running in this process for the whole run."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str) -> str:
    """The test bucket, created once."""
    import boto3

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=S3_TEST_BUCKET)
    client.close()
    return S3_TEST_BUCKET


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage_settings(request: pytest.FixtureRequest, storage: str) -> dict[str, object]:
    """make_settings overrides for the `storage` backend (empty for the default local folder)."""
    if storage == "local":
        return {}
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return {
        "storage_url": f"s3://{bucket}/run-{uuid.uuid4().hex[:12]}",
        "s3_endpoint_url": endpoint,
        **S3_TEST_CREDENTIALS,
    }


@pytest.fixture
async def store(tmp_path: Path, storage_settings: dict[str, object]) -> AsyncIterator[object]:
    """The `storage` backend, built from settings like the app builds it."""
    from modelyard.artifacts import make_store

    settings = make_settings(tmp_path, "sqlite+aiosqlite:///unused.db", **storage_settings)
    built = make_store(settings)
    yield built
    await built.aclose()


# --- model files ------------------------------------------------------------------------------
# Legitimate model files of every format, built once per run (see tests/serving/legit.py).


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> legit.ModelFile:
    """Return a function giving the path of a legitimate model file by case name (cached)."""
    folder = tmp_path_factory.mktemp("models")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            case_folder = folder / name
            case_folder.mkdir()
            built[name] = legit.LEGIT_BY_NAME[name].build(case_folder)
        return built[name]

    return get


@pytest.fixture
def iris_skops(model_file: legit.ModelFile) -> Path:
    return model_file("lr_skops")


@pytest.fixture
def iris_bytes(iris_skops: Path) -> bytes:
    return iris_skops.read_bytes()


# How long the process may take to exit after the suite before a watchdog reports the threads
# that keep it alive and ends it with the suite's status (the interpreter waits for every
# non-daemon thread at exit, forever if one never ends).
EXIT_GRACE_SECONDS = 60.0


def pytest_unconfigure(config: pytest.Config) -> None:
    """Make sure the run ends with its own status even when a thread a test left behind never
    ends: a daemon watchdog, which a normal exit simply outlives, names the stuck threads and
    where they wait, then ends the process."""
    import faulthandler
    import sys
    import threading

    status = int(getattr(config, "_modelyard_exitstatus", 1))

    def watchdog() -> None:
        stuck = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon]
        sys.stderr.write(f"\nthe process did not exit; threads still running: {stuck}\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(status)

    timer = threading.Timer(EXIT_GRACE_SECONDS, watchdog)
    timer.daemon = True
    timer.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._modelyard_exitstatus = exitstatus  # type: ignore[attr-defined]
