"""`/api/v1/models/{model}/traffic/stats`: the versions that served a model's traffic, and its
shadow versions, compared over a window (read from the rollups)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.db.tables import RegisteredModel, TrafficPolicy, User, shadow_rollups
from modelyard.predictions import targets as resolution
from modelyard.predictions.log import queries, rollups
from modelyard.schemas import ReadModel


class RouteStats(ReadModel):
    version: int | None
    targets: list[str] = Field(description="the policy's targets resolving to it now")
    requests: int
    failures: int
    avg_inference_time_ms: float | None
    p50_inference_time_ms: float | None
    p95_inference_time_ms: float | None


class ShadowStats(ReadModel):
    version: int | None
    requests: int
    failures: int
    avg_inference_time_ms: float | None
    p50_inference_time_ms: float | None
    p95_inference_time_ms: float | None
    label_rows: int = Field(description="rows compared by label (classifiers)")
    label_agreement: float | None = Field(
        description="the share of those rows whose shadow label equals the primary's"
    )
    value_rows: int = Field(description="rows compared by value (regressors)")
    mean_absolute_difference: float | None = Field(
        description="the mean of |shadow - primary| over those rows"
    )


class TrafficStats(ReadModel):
    model_id: uuid.UUID
    model_name: str
    since: datetime | None
    until: datetime | None
    versions: list[RouteStats] = Field(
        description="primary traffic per version that served in the window"
    )
    shadows: list[ShadowStats] = Field(description="shadow predictions per shadow version")


async def traffic_stats(
    db: AsyncSession,
    user: User,
    model: RegisteredModel,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> TrafficStats:
    """Compare the versions that served the model's traffic in a window, and its shadows.

    Read from the rollups (their cost follows the window, not the log): `since` and `until` are
    widened to whole minutes; counts, means and agreement are exact, percentiles within the
    error `rollups` documents. Shadow agreement was computed when each shadow row was written.
    """
    by_version: dict[int, list[str]] = {}
    policy = await db.get(TrafficPolicy, model.id)
    if policy is not None:
        for route in policy.routes:
            target = await resolution.resolve_ref(db, model, route["target"])
            if target is not None:
                by_version.setdefault(target.version, []).append(route["target"])
    versions = [
        RouteStats(
            version=row.version,
            targets=by_version.get(row.version, []) if row.version is not None else [],
            requests=row.total_predictions,
            failures=row.failed_predictions,
            avg_inference_time_ms=row.avg_inference_time_ms,
            p50_inference_time_ms=row.p50_inference_time_ms,
            p95_inference_time_ms=row.p95_inference_time_ms,
        )
        for row in await queries.version_stats(
            db, user, model_id=model.id, since=since, until=until
        )
    ]
    return TrafficStats(
        model_id=model.id,
        model_name=model.name,
        since=since,
        until=until,
        versions=versions,
        shadows=await _shadow_stats(db, model.id, since=since, until=until),
    )


async def _shadow_stats(
    db: AsyncSession, model_id: uuid.UUID, *, since: datetime | None, until: datetime | None
) -> list[ShadowStats]:
    r = shadow_rollups.c
    query = (
        select(
            func.max(r.version).label("version"),
            func.sum(r.requests).label("requests"),
            func.sum(r.failures).label("failures"),
            func.sum(r.timed).label("timed"),
            func.sum(r.time_sum_ms).label("time_sum"),
            func.min(r.time_min_ms).label("low"),
            func.max(r.time_max_ms).label("high"),
            *(func.sum(r[name]).label(name) for name in rollups.BUCKET_COLUMNS),
            func.sum(r.label_rows).label("label_rows"),
            func.sum(r.agreed_rows).label("agreed_rows"),
            func.sum(r.value_rows).label("value_rows"),
            func.sum(r.abs_diff_sum).label("abs_diff_sum"),
        )
        .where(r.model_id == model_id, queries.rollup_window(since, until, shadow_rollups))
        .group_by(r.version_id)
        .order_by(func.max(r.version).desc())
    )
    stats = []
    for row in (await db.execute(query)).mappings():
        # PostgreSQL sums bigints as numeric: integers here.
        timed, label_rows = int(row["timed"]), int(row["label_rows"])
        value_rows = int(row["value_rows"])
        counts = [int(row[name]) for name in rollups.BUCKET_COLUMNS]
        low, high = row["low"], row["high"]
        stats.append(
            ShadowStats(
                version=row["version"],
                requests=int(row["requests"]),
                failures=int(row["failures"]),
                avg_inference_time_ms=row["time_sum"] / timed if timed else None,
                p50_inference_time_ms=rollups.percentile(counts, queries.P50, low, high),
                p95_inference_time_ms=rollups.percentile(counts, queries.P95, low, high),
                label_rows=label_rows,
                label_agreement=int(row["agreed_rows"]) / label_rows if label_rows else None,
                value_rows=value_rows,
                mean_absolute_difference=row["abs_diff_sum"] / value_rows if value_rows else None,
            )
        )
    return stats
