"""API types every domain shares: the strict request base and pages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

MAX_PAGE_SIZE = 100


class StrictModel(BaseModel):
    """A request body: unknown or read-only fields and non-finite numbers answer 422."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=False)


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
