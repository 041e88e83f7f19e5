"""Reading the prediction log back: what `/api/v1/predictions` and `/api/v1/analytics` answer.

Visibility is filtered in one place, `visible_predictions`: a caller sees the predictions it made
and those on models it owns; anything else does not exist for it (404, never 403). Analytics are
for owners: they cover the predictions on the caller's own models, whoever made them, or on one
model given by id that the caller may open (an admin may open any, as in the registry).

Analytics read the rollups the log writer keeps (`predictions.log.rollups`), so they cost
the same at 100 M logged rows as at 1,000: sums in SQL, then percentiles from the summed latency
buckets. Percentiles follow the nearest-rank definition (the value at rank ceil(p * n) of n sorted
times), estimated within the error `rollups` documents; only successful predictions with a time
count toward times. Analytics windows are whole minutes (`since` and `until` widened to them).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from modelyard.db.tables import Prediction, RegisteredModel, User, prediction_rollups
from modelyard.db.types import utcnow
from modelyard.errors import NotFound
from modelyard.predictions.log import rollups
from modelyard.predictions.log.record import PredictionStatus
from modelyard.predictions.log.schemas import (
    LIST_ERROR_CUT,
    LIST_ERROR_MAX_CHARS,
    DailyUsage,
    HourlyUsage,
    PredictionPage,
    PredictionRead,
    VersionStats,
)
from modelyard.registry import queries
from modelyard.registry import service as registry_service
from modelyard.schemas import PageParams

# Nearest-rank percentiles as fractions, so that ceil(p * n) is exact integer arithmetic.
P50 = (50, 100)
P95 = (95, 100)
P99 = (99, 100)
# Past this many matching predictions, `total` is an estimate (counting them all would cost
# what the whole list costs); counting up to it costs a bounded index walk.
TOTAL_EXACT_MAX = 1_000
# A cursor: microseconds since the epoch (8 bytes) and the prediction id (16 bytes).
CURSOR_BYTES = 24
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class PredictionNotFound(NotFound):
    def __init__(self, ref: uuid.UUID) -> None:
        super().__init__(f"prediction '{ref}' not found")


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


def encode_cursor(created_at: datetime, prediction_id: uuid.UUID) -> str:
    """Return the opaque cursor of the position just after one prediction (newest first)."""
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    raw = micros.to_bytes(8, "big", signed=True) + prediction_id.bytes
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Return the (created_at, id) a cursor stands for.

    Raises:
        ValueError: not a cursor this server made.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not a cursor from a `next` field") from exc
    if len(raw) != CURSOR_BYTES:
        raise ValueError("not a cursor from a `next` field")
    micros = int.from_bytes(raw[:8], "big", signed=True)
    try:
        created_at = _EPOCH + timedelta(microseconds=micros)
    except OverflowError as exc:
        raise ValueError("not a cursor from a `next` field") from exc
    return created_at, uuid.UUID(bytes=raw[8:])


def valid_cursor(cursor: str | None) -> str | None:
    if cursor is not None:
        decode_cursor(cursor)
    return cursor


def _after(cursor: tuple[datetime, uuid.UUID]) -> ColumnElement[bool]:
    """Rows after the cursor in the list's order (created_at, id descending)."""
    at, prediction_id = cursor
    # The plain `created_at <= at` lets the (…, created_at) indexes bound the scan.
    return and_(
        Prediction.created_at <= at,
        or_(
            Prediction.created_at < at,
            and_(Prediction.created_at == at, Prediction.id < prediction_id),
        ),
    )


async def _count_up_to(db: AsyncSession, part: Select[Any], cap: int) -> int:
    """Count the rows of `part`, stopping at `cap` (a bounded index walk)."""
    capped = part.with_only_columns(Prediction.id).limit(cap).subquery()
    return await db.scalar(select(func.count()).select_from(capped)) or 0


async def _estimate_owned(
    db: AsyncSession,
    user: User,
    *,
    model_id: uuid.UUID | None,
    status: PredictionStatus | None,
    since: datetime | None,
    until: datetime | None,
) -> int:
    """Estimate the predictions on the caller's models from the rollups (windows widened to
    whole minutes): the cost of analytics, not of the log's size."""
    r = prediction_rollups.c
    counted = {
        None: r.requests,
        PredictionStatus.ERROR: r.failures,
        PredictionStatus.SUCCESS: r.requests - r.failures,
    }[status]
    query = select(func.sum(counted)).where(
        queries.owned_by(user, r.owner_id), rollup_window(since, until)
    )
    if model_id is not None:
        query = query.where(r.model_id == model_id)
    return int(await db.scalar(query) or 0)


async def list_predictions(
    db: AsyncSession,
    user: User,
    *,
    page: PageParams,
    cursor: str | None = None,
    model_id: uuid.UUID | None = None,
    status: PredictionStatus | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    payloads: bool = False,
    shadow: bool | None = None,
) -> PredictionPage:
    """Return one page of the predictions the caller may see, newest first, and their total.

    A page starts after `cursor` (the `next` of the page before), then skips `offset` rows: by
    cursor, page 1,000 costs what page 1 costs. `total` is exact up to TOTAL_EXACT_MAX rows and
    an estimate past it (`total_is_estimate`). Without `payloads`, items leave inputs and
    outputs out (null) and cut errors at LIST_ERROR_MAX_CHARS, in SQL.
    """
    if db.get_bind().dialect.name == "postgresql":
        # Plan each query for its own values: after five runs of one prepared statement,
        # PostgreSQL may switch to a generic plan, which cannot prune partitions by the window or
        # the cursor when planning, and walked every partition's index (7 ms became 55-70 ms).
        await db.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    filters = _time_window(since, until)
    if model_id is not None:
        filters.append(Prediction.model_id == model_id)
    if shadow is not None:
        filters.append(Prediction.shadow.is_(shadow))
    if status is not None:
        # Inline, not a parameter: a planner can only use the partial index of failures
        # (`WHERE status = 'error'`) when it sees the value.
        filters.append(Prediction.status == literal(status.value, literal_execute=True))
    # The caller's own calls on others' models, written as their partial index is, so that the
    # planner uses it.
    foreign = select(Prediction).where(
        Prediction.user_id == user.id, Prediction.owner_id.is_distinct_from(Prediction.user_id)
    )
    # The two halves of what the caller may see, disjoint: each walks its own (…, created_at)
    # index newest first and stops after a page, where one OR would sort every visible row.
    parts = [
        select(Prediction).where(queries.owned_by(user, Prediction.owner_id), *filters),
        foreign.where(*filters),
    ]
    # Most callers are owners reading their own log: when the caller has no calls on others'
    # models (counted on their small partial index), the second half is left out. Ordered, the
    # planner would walk the time index instead, filtering out every one of the owner's rows.
    # Counted without the filters first: with them, a planner unaware of how few such calls
    # there are may walk a filter's index instead (500 ms at 1 M rows).
    called = await _count_up_to(db, foreign, TOTAL_EXACT_MAX + 1)
    if called == 0:
        parts = parts[:1]
    elif filters:
        called = await _count_up_to(db, parts[1], TOTAL_EXACT_MAX + 1)
    newest_first = (Prediction.created_at.desc(), Prediction.id.desc())
    wanted = page.offset + page.limit + 1  # one more tells whether there is a next page
    position = [_after(decode_cursor(cursor))] if cursor is not None else []
    halves = [
        part.with_only_columns(Prediction.id, Prediction.created_at)
        .where(*position)
        .order_by(*newest_first)
        .limit(wanted)
        .subquery()
        for part in parts
    ]
    keys = union_all(*(select(half.c.id, half.c.created_at) for half in halves)).subquery()
    page_keys = (
        select(keys.c.id, keys.c.created_at)
        .order_by(keys.c.created_at.desc(), keys.c.id.desc())
        .limit(page.limit + 1)
        .offset(page.offset)
        .subquery()
    )
    ordered = (
        _with_model_name(select(Prediction))
        # created_at too: on a partitioned table it picks the partition of each row.
        .join(
            page_keys,
            and_(Prediction.id == page_keys.c.id, Prediction.created_at == page_keys.c.created_at),
        )
        .order_by(*newest_first)
    )
    if payloads:
        items = [_read(prediction, name) for prediction, name in await db.execute(ordered)]
    else:
        rows = await db.execute(ordered.add_columns(_ERROR_HEAD).options(*_SUMMARY_OPTIONS))
        items = [_summary(prediction, name, error) for prediction, name, error in rows]
    next_cursor = None
    if len(items) > page.limit:
        items = items[: page.limit]
        next_cursor = encode_cursor(items[-1].created_at, items[-1].id)
    owned = await _count_up_to(db, parts[0], TOTAL_EXACT_MAX + 1)
    is_estimate = owned + called > TOTAL_EXACT_MAX
    if owned > TOTAL_EXACT_MAX:
        estimate = await _estimate_owned(
            db, user, model_id=model_id, status=status, since=since, until=until
        )
        owned = max(owned, estimate)
    total = owned + called
    return PredictionPage(
        items=items,
        total=total,
        total_is_estimate=is_estimate,
        limit=page.limit,
        offset=page.offset,
        next=next_cursor,
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
    r = prediction_rollups.c
    if model_id is None:
        return queries.owned_by(user, r.owner_id)
    model = await registry_service.get_model(db, user, str(model_id))
    return r.model_id == model.id


def rollup_window(
    since: datetime | None, until: datetime | None, table: Table = prediction_rollups
) -> ColumnElement[bool]:
    """Select the rollups of `table` covering [since, until) widened to whole minutes: whole
    days from the daily rollups, the hours and then the minutes at either edge from the
    shorter ones."""
    low = rollups.floor_to(since, rollups.MINUTE) if since is not None else None
    high = rollups.ceil_to(until, rollups.MINUTE) if until is not None else None
    return or_(*_tiles(low, high, (rollups.DAY, rollups.HOUR, rollups.MINUTE), table))


def _tiles(
    low: datetime | None, high: datetime | None, periods: Sequence[int], table: Table
) -> list[ColumnElement[bool]]:
    """Return conditions selecting rollups that tile [low, high) (None: open) exactly: the
    whole periods of the longest kind inside it, the rest from shorter ones."""
    period, *shorter = periods
    if not shorter:  # minutes: the bounds are whole minutes already
        return [_span(period, low, high, table)]
    first = rollups.ceil_to(low, period) if low is not None else None
    end = rollups.floor_to(high, period) if high is not None else None
    if first is not None and end is not None and first >= end:
        return _tiles(low, high, shorter, table)  # no whole period inside
    parts = [_span(period, first, end, table)]
    if low is not None and first is not None and low < first:
        parts += _tiles(low, first, shorter, table)
    if high is not None and end is not None and end < high:
        parts += _tiles(end, high, shorter, table)
    return parts


def _span(
    period: int, low: datetime | None, high: datetime | None, table: Table
) -> ColumnElement[bool]:
    r = table.c
    conditions = [r.period_s == period]
    if low is not None:
        conditions.append(r.start_at >= low)
    if high is not None:
        conditions.append(r.start_at < high)
    return and_(*conditions)


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

    Read from the rollups: `since` and `until` are widened to whole minutes; counts and the
    mean are exact, percentiles are within the error documented in `rollups`.

    Raises:
        ModelNotFound: `model_id` is not a model the caller may open.
    """
    r = prediction_rollups.c
    scope = [await _analytics_scope(db, user, model_id), rollup_window(since, until)]
    totals = (
        select(
            r.model_id,
            r.version_id,
            func.max(r.version).label("version"),
            func.sum(r.requests).label("total"),
            func.sum(r.failures).label("failed"),
            func.sum(r.timed).label("timed"),
            func.sum(r.time_sum_ms).label("time_sum"),
            func.min(r.time_min_ms).label("low"),
            func.max(r.time_max_ms).label("high"),
            func.max(r.last_at).label("last_at"),
            *(func.sum(r[name]).label(name) for name in rollups.BUCKET_COLUMNS),
        )
        .where(*scope)
        .group_by(r.model_id, r.version_id)
        .subquery()
    )
    query = (
        select(totals, RegisteredModel.name)
        .outerjoin(RegisteredModel, RegisteredModel.id == totals.c.model_id)
        .order_by(RegisteredModel.name, totals.c.model_id, totals.c.version.desc())
    )
    stats = []
    for row in (await db.execute(query)).mappings():
        counts = [int(row[name]) for name in rollups.BUCKET_COLUMNS]
        low, high = row["low"], row["high"]
        # PostgreSQL sums bigints as numeric: integers here.
        timed = int(row["timed"])
        stats.append(
            VersionStats(
                model_id=row["model_id"],
                model_name=row["name"],
                version=row["version"],
                total_predictions=int(row["total"]),
                failed_predictions=int(row["failed"]),
                avg_inference_time_ms=row["time_sum"] / timed if timed else None,
                p50_inference_time_ms=rollups.percentile(counts, P50, low, high),
                p95_inference_time_ms=rollups.percentile(counts, P95, low, high),
                p99_inference_time_ms=rollups.percentile(counts, P99, low, high),
                last_prediction_at=row["last_at"],
            )
        )
    return stats


async def _usage_rows(
    db: AsyncSession, scope: ColumnElement[bool], period: int, first: datetime
) -> dict[datetime, Any]:
    """Return the summed rollups of `period` seconds from `first` on, by period start."""
    r = prediction_rollups.c
    query = (
        select(
            r.start_at,
            func.sum(r.requests).label("total"),
            func.sum(r.failures).label("failed"),
            func.sum(r.timed).label("timed"),
            func.sum(r.time_sum_ms).label("time_sum"),
        )
        .where(scope, r.period_s == period, r.start_at >= first)
        .group_by(r.start_at)
    )
    return {row.start_at: row for row in await db.execute(query)}


def _mean_ms(row: Any) -> float | None:
    return row.time_sum / int(row.timed) if row is not None and row.timed else None


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
    found = {
        start.date(): row
        for start, row in (
            await _usage_rows(db, scope, rollups.DAY, datetime.combine(first, time(), tzinfo=UTC))
        ).items()
    }
    usage = []
    for offset in range(days):
        current = first + timedelta(days=offset)
        row = found.get(current)
        usage.append(
            DailyUsage(
                date=current,
                prediction_count=int(row.total) if row else 0,
                failed_count=int(row.failed) if row else 0,
                avg_inference_time_ms=_mean_ms(row),
            )
        )
    return usage


async def hourly_usage(
    db: AsyncSession, user: User, *, hours: int, model_id: uuid.UUID | None = None
) -> list[HourlyUsage]:
    """Return one row per UTC hour, oldest first, of the last `hours` hours (this one
    included), as `daily_usage` does per day: for a one-day window that draws more than a bar.

    Raises:
        ModelNotFound: `model_id` is not a model the caller may open.
    """
    scope = await _analytics_scope(db, user, model_id)
    first = rollups.floor_to(utcnow(), rollups.HOUR) - timedelta(hours=hours - 1)
    found = {
        start.astimezone(UTC): row
        for start, row in (await _usage_rows(db, scope, rollups.HOUR, first)).items()
    }
    usage = []
    for offset in range(hours):
        current = first + timedelta(hours=offset)
        row = found.get(current)
        usage.append(
            HourlyUsage(
                hour=current,
                prediction_count=int(row.total) if row else 0,
                failed_count=int(row.failed) if row else 0,
                avg_inference_time_ms=_mean_ms(row),
            )
        )
    return usage
