"""API types every domain shares: the strict request base and pages."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Depends, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

MAX_PAGE_SIZE = 100
# Free-form JSON fields (parameters, hyperparameters, metadata): nesting past ~254 levels made the
# database's JSON encoder fail (a 500); nobody's parameters are that deep or that big.
MAX_JSON_DEPTH = 32
MAX_JSON_BYTES = 256 * 1024


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _model_name(value: str) -> str:
    if not _MODEL_NAME.fullmatch(value):
        raise ValueError(
            "a model name is 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    # `{model}` in a path is a UUID or a name: a name that parses as a UUID would be ambiguous.
    try:
        uuid.UUID(value)
    except ValueError:
        return value
    raise ValueError("a model name cannot be a UUID")


# A registered model's name (the registry's models, and the models an API key is limited to).
ModelName = Annotated[str, AfterValidator(_model_name)]


class StrictModel(BaseModel):
    """A request body: unknown or read-only fields and non-finite numbers answer 422."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=False)


def bounded_json(value: dict[str, Any]) -> dict[str, Any]:
    """Return a free-form JSON object if it nests at most 32 levels and encodes to 256 KiB."""
    # Iterative: a recursive walk would itself overflow on what it is meant to refuse.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    if len(orjson.dumps(value)) > MAX_JSON_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BYTES} bytes as JSON")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(bounded_json)]
"""A free-form JSON object from a client, bounded in depth and size (422 past them)."""


class ReadModel(BaseModel):
    """A response body built from ORM rows."""

    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    items: Sequence[T]
    total: int
    limit: int
    offset: int


class DownloadUrl(BaseModel):
    url: str = Field(description="downloads the object without credentials until `expires_at`")
    expires_at: datetime


class PageParams(BaseModel):
    limit: int
    offset: int


async def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> PageParams:
    """Read `?limit=&offset=` (limit 1..100)."""
    return PageParams(limit=limit, offset=offset)


PageDep = Annotated[PageParams, Depends(page_params)]


def make_page(schema: type[M], rows: Iterable[object], total: int, params: PageParams) -> Page[M]:
    """Build the page answer for `rows` (ORM objects) rendered as `schema`."""
    return Page[schema](  # type: ignore[valid-type]
        items=[schema.model_validate(row) for row in rows],
        total=total,
        limit=params.limit,
        offset=params.offset,
    )
