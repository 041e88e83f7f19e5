"""The built image against real backends: a PostgreSQL database and a Redis database of the run's
own on 127.0.0.1, and the run's moto S3 server on loopback. Runs only when TEST_IMAGE names an
image (`make image-test`); `make test` skips it."""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from tests.deploy.image.helpers import MEASUREMENTS, Backends
from tests.deploy.image.podman import PodmanError, podman
from tests.deploy.sources import ENV_EXAMPLE, read_dotenv
from tests.serving import legit

IMAGE_VARIABLE = "TEST_IMAGE"
POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
# A Redis database no other test uses (the suite's are 0): flushed before and after the run.
REDIS_TEST_DB = int(os.environ.get("TEST_IMAGE_REDIS_DB", "13"))
# compose.yaml's secrets, made up for the run as a user is told to (deploy/.env.example).
COMPOSE_SECRETS = ("MODELYARD_SECRET_KEY", "MODELYARD_METRICS_TOKEN", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD")  # fmt: skip


@pytest.fixture(scope="session")
def image() -> str:
    name = os.environ.get(IMAGE_VARIABLE)
    if not name:
        pytest.skip(f"the image test runs with {IMAGE_VARIABLE}=<image> (make image-test)")
    try:
        podman("image", "exists", name)
    except (PodmanError, OSError) as exc:
        pytest.fail(f"{IMAGE_VARIABLE}={name}: no such image (make image): {exc}")
    return name


async def _postgres(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def backends(image: str, s3_endpoint: str) -> Iterator[Backends]:
    """An empty PostgreSQL database (the image's `migrate` makes the schema), a flushed Redis
    database, the S3 bucket compose's .env.example names."""
    run_id = uuid.uuid4().hex[:10]
    database = f"modelyard_image_{run_id}"
    asyncio.run(_postgres(f'CREATE DATABASE "{database}"'))
    redis_url = f"redis://127.0.0.1:6379/{REDIS_TEST_DB}"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    _create_bucket(s3_endpoint, read_dotenv(ENV_EXAMPLE)["S3_BUCKET"])
    try:
        yield Backends(
            database_url=f"postgresql://postgres@127.0.0.1:5432/{database}",
            redis_url=redis_url,
            s3_endpoint=s3_endpoint,
            run_id=run_id,
        )
    finally:
        client.flushdb()
        client.close()
        asyncio.run(_postgres(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def _create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    try:
        client.create_bucket(Bucket=bucket)
    finally:
        client.close()


@pytest.fixture(scope="session")
def compose_env(backends: Backends) -> dict[str, str]:
    """deploy/.env.example with its empty secrets filled in, as a user is asked to."""
    values = read_dotenv(ENV_EXAMPLE)
    for name in COMPOSE_SECRETS:
        values[name] = secrets.token_urlsafe(32)
    values["MODELYARD_SECRET_KEY"] = backends.secret_key
    values["MODELYARD_METRICS_TOKEN"] = backends.metrics_token
    return values


@pytest.fixture(scope="session")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An iris logistic regression saved with skops (the README walkthrough's model)."""
    return legit.write_skops(legit.iris_lr(), tmp_path_factory.mktemp("image") / "iris.skops")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not MEASUREMENTS.rows:
        return
    terminalreporter.section("image: memory of each role under a small load")
    for role, memory, note in MEASUREMENTS.rows:
        terminalreporter.line(
            f"{role:<34} RSS {memory.rss_mib:7.0f} MiB  PSS {memory.pss_mib:7.0f} MiB"
            f"  {memory.processes} processes  {note}"
        )
