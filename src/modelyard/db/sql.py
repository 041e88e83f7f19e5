"""SQL helpers every domain uses, the same on PostgreSQL and SQLite: text search (LIKE with its
wildcards escaped), membership in a JSON array column, and the rows a statement changed."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession


def json_array_contains(db: AsyncSession, column: Any, value: str) -> ColumnElement[bool]:
    """Return `value in column` for a JSON array column, on PostgreSQL and on SQLite."""
    if db.get_bind().dialect.name == "postgresql":
        # JSONB containment; served by a GIN index if one is ever needed.
        return column.op("@>")(func.jsonb_build_array(value))  # type: ignore[no-any-return]
    items = func.json_each(column).table_valued("value")
    return select(literal(1)).select_from(items).where(items.c.value == value).exists()


def like_pattern(text: str) -> str:
    """Return a LIKE pattern matching `text` anywhere, its wildcards escaped (escape `\\`)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def text_search(columns: list[Any], text: str) -> ColumnElement[bool]:
    """Match `text` case-insensitively inside any of `columns`."""
    pattern = like_pattern(text)
    return or_(*(c.ilike(pattern, escape="\\") for c in columns))


def rowcount(result: Any) -> int:
    """Return how many rows an UPDATE or DELETE matched (0 when the driver cannot tell).

    `Session.execute` is typed to return a `Result`, which has no `rowcount`: the `CursorResult`
    an UPDATE or DELETE gives back has one.
    """
    return int(getattr(result, "rowcount", 0) or 0)
