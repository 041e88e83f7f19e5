"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC that always comes back timezone-aware.

    SQLite has no time zone type and returns naive datetimes; without this, comparing a stored
    time with `datetime.now(UTC)` raises on SQLite and works on PostgreSQL.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)  # noqa: S101 - the impl type returns datetimes
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def uuid7() -> uuid.UUID:
    """Return a time-ordered UUID (RFC 9562 version 7): a millisecond timestamp, then 74 random bits.

    For append-only tables such as the prediction log: new ids land at the end of the primary key
    index instead of on a random page of it, so a batch insert touches a few pages, not hundreds
    (on SQLite the insert cost stays flat as the table grows; PostgreSQL's index stays compact).
    """
    ms = time.time_ns() // 1_000_000
    # Uniqueness, not secrecy: every read of a prediction checks its owner. The random module
    # costs a tenth of os.urandom's system call on the hot path (and is reseeded in forks).
    rand = random.getrandbits(74)
    rand_a = rand >> 62
    rand_b = rand & ((1 << 62) - 1)
    return uuid.UUID(
        int=(ms & (1 << 48) - 1) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    )
