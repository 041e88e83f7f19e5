"""Reading the prediction log back: `/api/v1/predictions` and `/api/v1/analytics`.

Visibility is filtered in one place, `visible_predictions`: a caller sees the predictions it made
and those on models it owns; anything else does not exist for it (404, never 403). Analytics are
for owners: they cover the predictions on the caller's own models, whoever made them, or on one
model given by id that the caller may open (an admin may open any, as in the registry).

Aggregates are computed in SQL on both dialects. Percentiles use the nearest-rank definition: the
p-th percentile of n sorted times is the value at rank ceil(p * n) (1-based), always a measured
time, never an interpolation; only successful predictions with a time count toward times.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Query
from pydantic import AwareDatetime, Field
from sqlalchemy import ColumnElement, Date, Select, and_, case, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from modelyard.auth.deps import CurrentUser
from modelyard.db.deps import SessionDep
from modelyard.db.tables import Prediction, RegisteredModel, User
from modelyard.db.types import utcnow
from modelyard.errors import NotFound
from modelyard.registry import queries
from modelyard.registry import service as registry_service
from modelyard.routing import make_router
from modelyard.schemas import Page, PageDep, PageParams, ReadModel

router = make_router(tags=["predictions"])

MAX_USAGE_DAYS = 365
# Characters of an error a list shows; the prediction itself shows it whole. Cut in SQL, so a
# page of rows logged before errors had a budget does not carry megabytes each.
LIST_ERROR_MAX_CHARS = 1024
LIST_ERROR_CUT = "... (cut short in lists; the prediction itself shows it whole)"
# Nearest-rank percentiles as fractions, so that ceil(p * n) is exact integer arithmetic.
P50 = (50, 100)
P95 = (95, 100)


class PredictionStatus(StrEnum):
    SUCCESS = "success"
    ERROR = "error"


class PredictionNotFound(NotFound):
    def __init__(self, ref: uuid.UUID) -> None:
        super().__init__(f"prediction '{ref}' not found")


class Include(StrEnum):
    PAYLOADS = "payloads"


class PredictionRead(ReadModel):
    id: uuid.UUID
    model_id: uuid.UUID | None
    model_name: str | None = None
    version: int | None
    status: str
    error: str | None = Field(
        description=f"in lists, at most {LIST_ERROR_MAX_CHARS} characters unless `include=payloads`"
    )
    protocol: str
    inputs: Any = Field(
        description="null in lists unless `include=payloads`; a payload larger than the log's "
        'budget is stored as {"truncated": true, "bytes": N, "preview": "..."}'
    )
    outputs: Any = Field(description="as `inputs`")
    n_rows: int
    inference_time_ms: float | None
    created_at: datetime
    user_id: uuid.UUID | None
    api_key_id: uuid.UUID | None


class VersionStats(ReadModel):
    model_id: uuid.UUID
    model_name: str | None
    version: int | None
    total_predictions: int
    failed_predictions: int
    avg_inference_time_ms: float | None
    p50_inference_time_ms: float | None
    p95_inference_time_ms: float | None
    last_prediction_at: datetime


class DailyUsage(ReadModel):
    date: date
    prediction_count: int
    failed_count: int
    avg_inference_time_ms: float | None


# --- queries ----------------------------------------------------------------------------------


def visible_predictions(user: User) -> Select[Prediction]:
    """Select the predictions `user` may see: its own calls and the calls on models it owns."""
    return select(Prediction).where(
        or_(Prediction.user_id == user.id, queries.owned_by(user, Prediction.owner_id))
    )


def _with_model_name(query: Select[Prediction]) -> Select[Prediction, str]:
    # An outer join: the log outlives the models it mentions.
    return query.add_columns(RegisteredModel.name).outerjoin(
        RegisteredModel, RegisteredModel.id == Prediction.model_id
    )


def _read(prediction: Prediction, model_name: str | None) -> PredictionRead:
    read = PredictionRead.model_validate(prediction)
    read.model_name = model_name
    return read


# What a list reads of each row without `include=payloads`: payloads are never loaded, and the
# error only up to LIST_ERROR_MAX_CHARS (one more tells whether it was cut).
_SUMMARY_FIELDS = tuple(
    name for name in PredictionRead.model_fields if name not in {"inputs", "outputs", "error"}
)
_SUMMARY_OPTIONS = (
    defer(Prediction.inputs, raiseload=True),
    defer(Prediction.outputs, raiseload=True),
    defer(Prediction.error, raiseload=True),
)
_ERROR_HEAD = func.substr(Prediction.error, 1, LIST_ERROR_MAX_CHARS + 1).label("error_head")


def _summary(prediction: Prediction, model_name: str | None, error: str | None) -> PredictionRead:
    if error is not None and len(error) > LIST_ERROR_MAX_CHARS:
        error = error[:LIST_ERROR_MAX_CHARS] + LIST_ERROR_CUT
    fields = {name: getattr(prediction, name) for name in _SUMMARY_FIELDS if name != "model_name"}
    return PredictionRead(**fields, model_name=model_name, error=error, inputs=None, outputs=None)


def _time_window(since: datetime | None, until: datetime | None) -> list[ColumnElement[bool]]:
    conditions = []
    if since is not None:
        conditions.append(Prediction.created_at >= since)
    if until is not None:
        conditions.append(Prediction.created_at < until)
    return conditions


async def list_predictions(
    db: AsyncSession,
    user: User,
    *,
    page: PageParams,
    model_id: uuid.UUID | None = None,
    status: PredictionStatus | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    payloads: bool = False,
) -> Page[PredictionRead]:
    """Return one page of the predictions the caller may see, newest first, and their total.

    Without `payloads`, items leave inputs and outputs out (null) and cut errors at
    LIST_ERROR_MAX_CHARS, in SQL: a page costs the same whatever was logged.
    """
    query = visible_predictions(user).where(*_time_window(since, until))
    if model_id is not None:
        query = query.where(Prediction.model_id == model_id)
    if status is not None:
        query = query.where(Prediction.status == status.value)
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    ordered = (
        _with_model_name(query)
        .order_by(Prediction.created_at.desc(), Prediction.id.desc())
        .limit(page.limit)
        .offset(page.offset)
    )
    if payloads:
        items = [_read(prediction, name) for prediction, name in await db.execute(ordered)]
    else:
        rows = await db.execute(ordered.add_columns(_ERROR_HEAD).options(*_SUMMARY_OPTIONS))
        items = [_summary(prediction, name, error) for prediction, name, error in rows]
    return Page[PredictionRead](
        items=items,
        total=total or 0,
        limit=page.limit,
        offset=page.offset,
    )


async def get_prediction(db: AsyncSession, user: User, prediction_id: uuid.UUID) -> PredictionRead:
    """Return one prediction the caller may see.

    Raises:
        PredictionNotFound: no such prediction, or one the caller may not see.
    """
    query = _with_model_name(visible_predictions(user).where(Prediction.id == prediction_id))
    found = (await db.execute(query)).one_or_none()
    if found is None:
        raise PredictionNotFound(prediction_id)
    return _read(*found)


async def _analytics_scope(
    db: AsyncSession, user: User, model_id: uuid.UUID | None
) -> ColumnElement[bool]:
    """Return which predictions analytics cover: those on one model the caller may open (an
    admin may open any), else those on the caller's own models.

    Raises:
        ModelNotFound: `model_id` is not a model the caller may open.
    """
    if model_id is None:
        return queries.owned_by(user, Prediction.owner_id)
    model = await registry_service.get_model(db, user, str(model_id))
    return Prediction.model_id == model.id


def _nearest_rank(count: ColumnElement[int], fraction: tuple[int, int]) -> ColumnElement[int]:
    """Return ceil(num / den * count) in integer arithmetic, the same on SQLite and PostgreSQL."""
    num, den = fraction
    return (count * num + (den - 1)) // den


async def version_stats(
    db: AsyncSession,
    user: User,
    *,
    model_id: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[VersionStats]:
    """Return per model version statistics of the predictions on the caller's models, or on
    model `model_id`.

    Raises:
        ModelNotFound: `model_id` is not a model the caller may open.
    """
    scope = [await _analytics_scope(db, user, model_id), Prediction.model_id.is_not(None)]
    scope += _time_window(since, until)
    key = (Prediction.model_id, Prediction.version_id)
    is_timed = and_(Prediction.status == "success", Prediction.inference_time_ms.is_not(None))

    totals = (
        select(
            Prediction.model_id,
            Prediction.version_id,
            Prediction.version,
            func.count().label("total"),
            func.sum(case((Prediction.status == "error", 1), else_=0)).label("failed"),
            func.avg(case((is_timed, Prediction.inference_time_ms))).label("avg_ms"),
            func.max(Prediction.created_at).label("last_at"),
        )
        .where(*scope)
        .group_by(Prediction.model_id, Prediction.version_id, Prediction.version)
        .subquery()
    )
    ranked = (
        select(
            Prediction.model_id,
            Prediction.version_id,
            Prediction.inference_time_ms.label("ms"),
            func.row_number()
            .over(partition_by=key, order_by=(Prediction.inference_time_ms, Prediction.id))
            .label("rank"),
            func.count().over(partition_by=key).label("n"),
        )
        .where(*scope, is_timed)
        .subquery()
    )
    percentiles = (
        select(
            ranked.c.model_id,
            ranked.c.version_id,
            func.max(case((ranked.c.rank == _nearest_rank(ranked.c.n, P50), ranked.c.ms))).label(
                "p50"
            ),
            func.max(case((ranked.c.rank == _nearest_rank(ranked.c.n, P95), ranked.c.ms))).label(
                "p95"
            ),
        )
        .group_by(ranked.c.model_id, ranked.c.version_id)
        .subquery()
    )
    query = (
        select(
            totals.c.model_id,
            RegisteredModel.name,
            totals.c.version,
            totals.c.total,
            totals.c.failed,
            totals.c.avg_ms,
            percentiles.c.p50,
            percentiles.c.p95,
            totals.c.last_at,
        )
        .outerjoin(
            percentiles,
            and_(
                percentiles.c.model_id == totals.c.model_id,
                # A failure before a version was resolved has none: NULL keys must still match.
                percentiles.c.version_id.is_not_distinct_from(totals.c.version_id),
            ),
        )
        .outerjoin(RegisteredModel, RegisteredModel.id == totals.c.model_id)
        .order_by(RegisteredModel.name, totals.c.model_id, totals.c.version.desc())
    )
    rows = await db.execute(query)
    return [
        VersionStats(
            model_id=row.model_id,
            model_name=row.name,
            version=row.version,
            total_predictions=row.total,
            failed_predictions=row.failed or 0,
            avg_inference_time_ms=row.avg_ms,
            p50_inference_time_ms=row.p50,
            p95_inference_time_ms=row.p95,
            last_prediction_at=row.last_at,
        )
        for row in rows
    ]


def utc_day(db: AsyncSession, column: Any) -> ColumnElement[date]:
    """Return the UTC calendar day of a timestamp column, on SQLite and PostgreSQL."""
    if db.get_bind().dialect.name == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    # SQLite stores UTC text ("YYYY-MM-DD HH:MM:SS..."): date() keeps the day part.
    return func.date(column, type_=Date)


async def daily_usage(
    db: AsyncSession, user: User, *, days: int, model_id: uuid.UUID | None = None
) -> list[DailyUsage]:
    """Return one row per UTC day, oldest first, of the last `days` days (today included),
    counting the predictions on the caller's models (or on model `model_id`); days without any
    are zero rows.

    Raises:
        ModelNotFound: `model_id` is not a model the caller may open.
    """
    scope = await _analytics_scope(db, user, model_id)
    today = utcnow().date()
    first = today - timedelta(days=days - 1)
    day = utc_day(db, Prediction.created_at).label("day")
    is_timed = and_(Prediction.status == "success", Prediction.inference_time_ms.is_not(None))
    query = (
        select(
            day,
            func.count().label("total"),
            func.sum(case((Prediction.status == "error", 1), else_=0)).label("failed"),
            func.avg(case((is_timed, Prediction.inference_time_ms))).label("avg_ms"),
        )
        .where(scope, Prediction.created_at >= datetime.combine(first, time(), tzinfo=UTC))
        .group_by(day)
    )
    found = {row.day: row for row in await db.execute(query)}
    usage = []
    for offset in range(days):
        current = first + timedelta(days=offset)
        row = found.get(current)
        usage.append(
            DailyUsage(
                date=current,
                prediction_count=row.total if row else 0,
                failed_count=(row.failed or 0) if row else 0,
                avg_inference_time_ms=row.avg_ms if row else None,
            )
        )
    return usage


# --- routes -----------------------------------------------------------------------------------

ModelFilter = Annotated[uuid.UUID | None, Query(description="only this model's predictions")]
Since = Annotated[
    AwareDatetime | None, Query(description="from this time on, inclusive (with a time zone)")
]
Until = Annotated[AwareDatetime | None, Query(description="before this time (with a time zone)")]


@router.get("/api/v1/predictions", response_model=Page[PredictionRead])
async def list_prediction_log(
    user: CurrentUser,
    db: SessionDep,
    page: PageDep,
    model_id: ModelFilter = None,
    status: PredictionStatus | None = None,
    since: Since = None,
    until: Until = None,
    include: Annotated[
        Include | None,
        Query(description="`payloads`: each item's inputs, outputs and whole error too"),
    ] = None,
) -> Page[PredictionRead]:
    """List the logged predictions the caller may see (its own, and those on its models), newest first.

    Items leave inputs and outputs out (null) and cut errors at 1024 characters unless
    `include=payloads`; `GET /api/v1/predictions/{id}` shows one prediction whole.
    """
    return await list_predictions(
        db,
        user,
        page=page,
        model_id=model_id,
        status=status,
        since=since,
        until=until,
        payloads=include is Include.PAYLOADS,
    )


@router.get("/api/v1/predictions/{prediction_id}", response_model=PredictionRead)
async def show_prediction(
    prediction_id: uuid.UUID, user: CurrentUser, db: SessionDep
) -> PredictionRead:
    """Show one logged prediction."""
    return await get_prediction(db, user, prediction_id)


@router.get("/api/v1/analytics/models", response_model=list[VersionStats])
async def model_analytics(
    user: CurrentUser,
    db: SessionDep,
    model_id: ModelFilter = None,
    since: Since = None,
    until: Until = None,
) -> Sequence[VersionStats]:
    """Per version of the caller's models: counts, failures, mean and p50/p95 inference time.

    A list, not a page: one row per version with predictions in the window. With `model_id`,
    that model's versions (admins: any model); an unknown or foreign one answers 404.
    """
    return await version_stats(db, user, model_id=model_id, since=since, until=until)


@router.get("/api/v1/analytics/usage", response_model=list[DailyUsage])
async def usage_analytics(
    user: CurrentUser,
    db: SessionDep,
    days: Annotated[int, Query(ge=1, le=MAX_USAGE_DAYS)] = 30,
    model_id: ModelFilter = None,
) -> Sequence[DailyUsage]:
    """Predictions per UTC day on the caller's models over the last `days` days, zero days included."""
    return await daily_usage(db, user, days=days, model_id=model_id)
