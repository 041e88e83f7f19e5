"""Routes of `/api/v1/compare`: runs or model versions side by side."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Query

from modelyard.auth.deps import CurrentUser
from modelyard.changes.deps import EventsDep
from modelyard.compare import service
from modelyard.compare.schemas import MAX_ITEMS, Comparison
from modelyard.db.deps import SessionDep
from modelyard.deps import SettingsDep
from modelyard.edge.routing import make_router

router = make_router(prefix="/api/v1/compare", tags=["compare"])

Ids = Annotated[
    list[uuid.UUID],
    Query(
        alias="id",
        max_length=MAX_ITEMS + 1,  # past it, 422 from the service with a clear message
        description="2 to 10 ids, the parameter repeated: `?id=...&id=...`",
    ),
]


@router.get("/runs", response_model=Comparison)
async def compare_runs(ids: Ids, user: CurrentUser, db: SessionDep) -> Comparison:
    """Compare 2 to 10 of your runs (experiments): parameters and latest metrics side by side,
    each key marked `differs` when the runs disagree, and every metric's history per run.

    Another user's id answers 404; fewer than 2 or more than 10 ids, or a repeated one, 422.
    """
    return await service.compare_runs(db, user, ids)


@router.get("/versions", response_model=Comparison)
async def compare_versions(
    ids: Ids,
    user: CurrentUser,
    db: SessionDep,
    events: EventsDep,
    settings: SettingsDep,
    days: Annotated[int, Query(ge=1, le=90, description="the serving window")] = 7,
) -> Comparison:
    """Compare 2 to 10 model versions (their UUIDs, of any of your models): hyperparameters and
    metrics side by side with differences marked, the metric histories of the runs they are
    linked to, and their live serving figures — requests, failures, p50/p95 inference time over
    the last `days` days (from the rollups) and drift status over the last 24 hours.

    Another user's id answers 404; fewer than 2 or more than 10 ids, or a repeated one, 422.
    """
    return await service.compare_versions(
        db,
        user,
        ids,
        days=days,
        drift=service.DriftLimits(
            reference_rows=settings.drift_reference_rows,
            max_rows=settings.drift_window_max_rows,
            max_payload_bytes=settings.prediction_log_max_payload_bytes,
        ),
        events=events,
    )
