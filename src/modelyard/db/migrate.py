"""Apply and inspect Alembic migrations; the only way the schema is made."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from modelyard.db.engine import make_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    """Build the Alembic configuration for the database at `url` (an async driver URL)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url`; call from synchronous code (it runs its own loop)."""
    command.upgrade(alembic_config(url), revision)


def current(url: str) -> tuple[str, ...]:
    """The revisions the database at `url` is at (none for an empty database)."""

    def heads(connection: Connection) -> tuple[str, ...]:
        return tuple(MigrationContext.configure(connection).get_current_heads())

    async def read() -> tuple[str, ...]:
        engine = make_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(heads)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def head() -> str:
    """The newest revision of the migrations."""
    revision = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert revision is not None  # noqa: S101 - the migrations folder is never empty
    return revision


def downgrade(url: str, revision: str) -> None:
    """Downgrade the database at `url` to `revision`."""
    command.downgrade(alembic_config(url), revision)
