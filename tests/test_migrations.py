"""The migrations: up, down and up again per dialect, and they match the ORM tables exactly."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import column, insert, inspect, select, table, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.auth import service as auth_service
from modelyard.auth.service import Caller
from modelyard.db import migrate
from modelyard.db.engine import make_engine
from modelyard.db.tables import ApiKey, Base, Prediction, User, prediction_rollups
from modelyard.predictions.log import rollups
from tests.support.services import service_missing
from tests.support.settings import POSTGRES_ADMIN_URL

T = TypeVar("T")

VERSION_TABLE = "alembic_version"
SCHEMA_TABLES = frozenset(Base.metadata.tables)
# The columns of api_keys before scopes.
OLD_KEY_COLUMNS = frozenset(
    {"id", "user_id", "name", "prefix", "key_hash", "is_active", "created_at", "last_used_at"}
    | {"expires_at", "revoked_at"}
)


async def _postgres_admin(sql: str) -> None:
    engine = make_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture
def fresh_url(dialect: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the test's own: a new SQLite file, or a new PostgreSQL database."""
    if dialect == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"modelyard_migrations_{uuid.uuid4().hex[:12]}"
    admin_url = make_url(POSTGRES_ADMIN_URL)
    try:
        asyncio.run(_postgres_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        service_missing("PostgreSQL", admin_url.render_as_string(hide_password=True), exc)
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _run(url: str, fn: Callable[[Connection], T]) -> T:
    """Run the synchronous `fn(connection)` on a connection to `url`."""

    async def go() -> T:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _table_names(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _schema_diff(conn: Connection) -> list[Any]:
    # The comparison options of migrations/env.py, so "no diff" means autogenerate writes nothing.
    context = MigrationContext.configure(conn, opts={"compare_type": True, "render_as_batch": True})
    diff: list[Any] = compare_metadata(context, Base.metadata)
    return diff


def _head(url: str) -> str | None:
    return ScriptDirectory.from_config(migrate.alembic_config(url)).get_current_head()


def test_upgrade_creates_every_table_at_head(fresh_url: str) -> None:
    migrate.upgrade(fresh_url)

    assert _run(fresh_url, _table_names) == SCHEMA_TABLES | {VERSION_TABLE}
    assert _run(fresh_url, _current_revision) == _head(fresh_url)


def test_downgrade_to_base_drops_every_table(fresh_url: str) -> None:
    migrate.upgrade(fresh_url)

    migrate.downgrade(fresh_url, "base")

    assert _run(fresh_url, _table_names) - {VERSION_TABLE} == set()
    assert _run(fresh_url, _current_revision) is None


def test_upgrade_after_downgrade_to_base_restores_the_schema(fresh_url: str) -> None:
    migrate.upgrade(fresh_url)
    migrate.downgrade(fresh_url, "base")

    migrate.upgrade(fresh_url)

    assert _run(fresh_url, _table_names) == SCHEMA_TABLES | {VERSION_TABLE}
    assert _run(fresh_url, _current_revision) == _head(fresh_url)
    assert _run(fresh_url, _schema_diff) == []


def test_autogenerate_finds_no_difference_after_upgrade(fresh_url: str) -> None:
    migrate.upgrade(fresh_url)

    assert _run(fresh_url, _schema_diff) == []


def test_rollups_migration_rolls_up_the_predictions_already_logged(fresh_url: str) -> None:
    migrate.upgrade(fresh_url, "5b1e7f3c9a20")  # the revision before the rollups
    model_id, version_id, owner_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    t0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
    times = [None, 0.001, 0.01, 0.0119, 0.5, 3.3, 12.0, 700.0, 50_000.0]
    rows = [
        {
            "id": uuid.uuid4(),
            "model_id": model_id,
            "version_id": None if i == 3 else version_id,
            "version": None if i == 3 else 1,
            "owner_id": owner_id,
            "user_id": None,
            "api_key_id": None,
            "protocol": "rest",
            "status": "error" if i % 4 == 0 else "success",
            "error": None,
            "inputs": None,
            "outputs": None,
            "n_rows": 2,
            "inference_time_ms": times[i % len(times)],
            "created_at": t0 + timedelta(seconds=41 * i),
        }
        for i in range(200)
    ]

    def fill(conn: Connection) -> None:
        conn.execute(insert(Prediction), rows)
        conn.commit()

    _run(fresh_url, fill)

    migrate.upgrade(fresh_url)

    def read(conn: Connection) -> list[dict[str, Any]]:
        found = conn.execute(select(prediction_rollups)).mappings()
        return [dict(row) for row in found]

    stored = {(r["period_s"], r["start_at"], r["version_id"]): r for r in _run(fresh_url, read)}
    expected = rollups.aggregate(rows)
    assert len(stored) == len(expected)
    for want in expected:
        got = stored[(want["period_s"], want["start_at"], want["version_id"])]
        for name, value in want.items():
            assert got[name] == (pytest.approx(value) if isinstance(value, float) else value), name


def test_scopes_migration_keeps_every_existing_key_doing_what_it_did(fresh_url: str) -> None:
    migrate.upgrade(fresh_url, "3a6c8e0b2d47")  # the revision before API key scopes
    users = {uuid.uuid4(): False, uuid.uuid4(): True}  # id: is_admin
    keys = {user_id: f"myd_{user_id.hex[:10]}_{'s' * 43}" for user_id in users}
    before_scopes = table(
        "api_keys",
        *(column(c.name, c.type) for c in ApiKey.__table__.columns if c.name in OLD_KEY_COLUMNS),
    )
    now = datetime.now(UTC)

    def fill(conn: Connection) -> None:
        for user_id, is_admin in users.items():
            conn.execute(
                insert(User).values(
                    id=user_id,
                    email=f"{user_id.hex}@example.com",
                    password_hash="x",
                    is_admin=is_admin,
                )
            )
            key = keys[user_id]
            conn.execute(
                insert(before_scopes).values(
                    id=uuid.uuid4(),
                    user_id=user_id,
                    name="old",
                    prefix=key[:14],
                    key_hash=hashlib.sha256(key.encode()).hexdigest(),
                    is_active=True,
                    created_at=now,
                )
            )
        conn.commit()

    _run(fresh_url, fill)

    migrate.upgrade(fresh_url)

    async def authenticate(key: str) -> Caller:
        engine = make_engine(fresh_url)
        try:
            async with AsyncSession(engine, expire_on_commit=False) as db:  # as the app
                return await auth_service.authenticate_api_key(db, key)
        finally:
            await engine.dispose()

    for user_id, is_admin in users.items():
        caller = asyncio.run(authenticate(keys[user_id]))
        powers = frozenset({"read", "predict", "write"} | ({"admin"} if is_admin else set()))
        assert caller.scopes == powers
        assert caller.models is None
        assert caller.user.id == user_id
