"""`/api/v1/predictions` (the log, as each caller may see it) and `/api/v1/analytics`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated

from fastapi import Query
from pydantic import AfterValidator

from modelyard.auth.deps import CurrentUser
from modelyard.db.deps import SessionDep
from modelyard.edge.routing import make_router
from modelyard.predictions.log.queries import (
    daily_usage,
    get_prediction,
    list_predictions,
    valid_cursor,
    version_stats,
)
from modelyard.predictions.log.record import PredictionStatus
from modelyard.predictions.log.schemas import (
    DailyUsage,
    Include,
    ModelFilter,
    PredictionPage,
    PredictionRead,
    Since,
    Until,
    VersionStats,
)
from modelyard.schemas import PageDep

router = make_router(tags=["predictions"])

MAX_USAGE_DAYS = 365


@router.get("/api/v1/predictions", response_model=PredictionPage)
async def list_prediction_log(
    user: CurrentUser,
    db: SessionDep,
    page: PageDep,
    cursor: Annotated[
        str | None,
        AfterValidator(valid_cursor),
        Query(description="the `next` of the previous page: the page after it"),
    ] = None,
    model_id: ModelFilter = None,
    status: PredictionStatus | None = None,
    since: Since = None,
    until: Until = None,
    include: Annotated[
        Include | None,
        Query(description="`payloads`: each item's inputs, outputs and whole error too"),
    ] = None,
    shadow: Annotated[
        bool | None,
        Query(description="only shadow predictions (true) or only primary ones (false)"),
    ] = None,
) -> PredictionPage:
    """List the logged predictions the caller may see (its own, and those on its models), newest first.

    Page with `cursor=<next of the previous page>` (`offset` still works, at a cost growing with
    it). `total` is exact up to 1,000 and an estimate past it (`total_is_estimate: true`).
    Items leave inputs and outputs out (null) and cut errors at 1024 characters unless
    `include=payloads`; `GET /api/v1/predictions/{id}` shows one prediction whole.
    """
    return await list_predictions(
        db,
        user,
        page=page,
        cursor=cursor,
        model_id=model_id,
        status=status,
        since=since,
        until=until,
        payloads=include is Include.PAYLOADS,
        shadow=shadow,
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
    """Per version of the caller's models: counts, failures, mean and p50/p95/p99 inference time.

    A list, not a page: one row per version with predictions in the window. With `model_id`,
    that model's versions (admins: any model); an unknown or foreign one answers 404. Read from
    per-minute, per-hour and per-day rollups: `since` and `until` are widened to whole minutes;
    counts and means are exact; percentiles are nearest-rank estimates within 9.1 % of the exact
    value (for times between 0.01 ms and 41.9 s).
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
