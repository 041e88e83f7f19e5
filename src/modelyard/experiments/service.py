"""Use cases of experiments: CRUD, metric history, the versions an experiment produced."""

from __future__ import annotations

import math
import operator
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.changes.events import Action, Events
from modelyard.db import sql
from modelyard.db.tables import (
    Experiment,
    ExperimentMetric,
    ModelVersion,
    RegisteredModel,
    User,
)
from modelyard.db.types import utcnow
from modelyard.errors import Conflict, NotFound, Unprocessable
from modelyard.experiments.schemas import (
    ExperimentCreate,
    ExperimentSort,
    ExperimentStatus,
    ExperimentUpdate,
    ExperimentVersion,
    MetricPoint,
)
from modelyard.schemas import PageParams


class ExperimentNotFound(NotFound):
    def __init__(self, ref: uuid.UUID) -> None:
        super().__init__(f"experiment '{ref}' not found")


def owned_experiments(user: User) -> Select[Experiment]:
    """Select the experiments `user` owns: the one place experiments are filtered by owner."""
    return select(Experiment).where(Experiment.owner_id == user.id)


async def count_experiments(db: AsyncSession, owner_id: uuid.UUID) -> int:
    """Count the experiments `owner_id` owns."""
    count = await db.scalar(
        select(func.count()).select_from(Experiment).where(Experiment.owner_id == owner_id)
    )
    return int(count or 0)


async def get_experiment(db: AsyncSession, user: User, experiment_id: uuid.UUID) -> Experiment:
    """Return the caller's experiment.

    Raises:
        ExperimentNotFound: no such experiment, or another user's.
    """
    found = await db.scalar(owned_experiments(user).where(Experiment.id == experiment_id))
    if found is None:
        raise ExperimentNotFound(experiment_id)
    return found


async def create_experiment(db: AsyncSession, user: User, data: ExperimentCreate) -> Experiment:
    """Create an experiment.

    Raises:
        Conflict: the caller has an experiment of that name.
    """
    experiment = Experiment(owner_id=user.id, status="running", **data.model_dump())
    db.add(experiment)
    await _commit_named(db, data.name)
    return experiment


METRIC_PREFIX = "metrics."
MAX_METRIC_KEY = 250
# `metrics.<key><op><number>`: the key is any text without an operator character.
_FILTER = re.compile(
    r"metrics\.(?P<key>[^<>=!]{1,250}?)\s*(?P<op><=|>=|!=|=|<|>)\s*(?P<value>[^\s<>=!]+)"
)
_OPERATORS: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class MetricFilter:
    """A threshold on a run's latest value of one metric: `metrics.accuracy>=0.9`."""

    key: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> MetricFilter:
        """Read `metrics.<key><op><number>` (op one of < <= > >= = !=).

        Raises:
            Unprocessable: anything else.
        """
        found = _FILTER.fullmatch(text.strip())
        if found is None:
            raise Unprocessable(
                f"filter {text!r} is not metrics.<key><op><number> "
                "(op one of <, <=, >, >=, =, !=), e.g. metrics.accuracy>=0.9"
            )
        try:
            value = float(found["value"])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise Unprocessable(f"filter {text!r}: {found['value']!r} is not a finite number")
        return cls(key=_metric_key(found["key"].strip()), op=found["op"], value=value)


def _metric_key(key: str) -> str:
    # PostgreSQL text cannot hold NUL, and no metric name needs a control character.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise Unprocessable("a metric key has no control characters")
    return key


def parse_sort(text: str | None) -> ExperimentSort | str:
    """Return the list's sort key: a column, or the metric key of `metrics.<key>`.

    Raises:
        Unprocessable: neither a known column nor a metric.
    """
    if text is None:
        return ExperimentSort.CREATED_AT
    if text.startswith(METRIC_PREFIX) and 0 < len(text) - len(METRIC_PREFIX) <= MAX_METRIC_KEY:
        return _metric_key(text.removeprefix(METRIC_PREFIX))
    try:
        return ExperimentSort(text)
    except ValueError:
        known = ", ".join(s.value for s in ExperimentSort)
        raise Unprocessable(f"sort {text!r} is not one of {known} or metrics.<key>") from None


def latest_value(key: str) -> Any:
    """Return a correlated subquery: the run's latest value (highest step) of metric `key`.

    The key is a bound parameter, never SQL text.
    """
    return (
        select(ExperimentMetric.value)
        .where(ExperimentMetric.experiment_id == Experiment.id, ExperimentMetric.key == key)
        .order_by(ExperimentMetric.step.desc(), ExperimentMetric.id.desc())
        .limit(1)
        .correlate(Experiment)
        .scalar_subquery()
    )


async def list_experiments(
    db: AsyncSession,
    user: User,
    *,
    page: PageParams,
    search: str | None = None,
    tag: str | None = None,
    sort: ExperimentSort | str = ExperimentSort.CREATED_AT,
    order: Literal["asc", "desc"] = "desc",
    filters: Sequence[MetricFilter] = (),
) -> tuple[Sequence[Experiment], int]:
    """Return one page of the caller's experiments and their total.

    `sort` is a column or a metric key (by the latest value; runs without it come last);
    `filters` keep the runs whose latest value of each filter's metric passes its threshold.
    """
    query = owned_experiments(user)
    if search:
        query = query.where(sql.text_search([Experiment.name, Experiment.description], search))
    if tag:
        query = query.where(sql.json_array_contains(db, Experiment.tags, tag))
    for f in filters:
        query = query.where(_OPERATORS[f.op](latest_value(f.key), f.value))
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    key = (
        getattr(Experiment, sort.value) if isinstance(sort, ExperimentSort) else latest_value(sort)
    )
    ordered = (key.asc() if order == "asc" else key.desc()).nulls_last()
    rows = await db.scalars(
        query.order_by(ordered, Experiment.created_at.desc(), Experiment.id)
        .limit(page.limit)
        .offset(page.offset)
    )
    return list(rows), total or 0


async def latest_values(
    db: AsyncSession, experiment_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, float]]:
    """Return the latest value (highest step) of each metric of each run, in one query."""
    if not experiment_ids:
        return {}
    m = ExperimentMetric
    rank = func.row_number().over(
        partition_by=(m.experiment_id, m.key), order_by=(m.step.desc(), m.id.desc())
    )
    ranked = (
        select(m.experiment_id, m.key, m.value, rank.label("rank"))
        .where(m.experiment_id.in_(experiment_ids))
        .subquery()
    )
    rows = await db.execute(
        select(ranked.c.experiment_id, ranked.c.key, ranked.c.value)
        .where(ranked.c.rank == 1)
        .order_by(ranked.c.key)
    )
    values: dict[uuid.UUID, dict[str, float]] = {i: {} for i in experiment_ids}
    for experiment_id, key, value in rows:
        values[experiment_id][key] = value
    return values


async def update_experiment(
    db: AsyncSession, experiment: Experiment, data: ExperimentUpdate
) -> Experiment:
    """Change an experiment's name, description, parameters, tags or status.

    A status leaving `running` (completed, failed, killed) ends the run: `ended_at` is set;
    going back to `running` clears it.
    """
    now = utcnow()
    changes = data.model_dump(exclude_unset=True)
    status = changes.get("status")
    if status is not None and status != experiment.status:
        experiment.ended_at = None if status == ExperimentStatus.RUNNING else now
    for name, value in changes.items():
        # Only the description can be cleared; null for the others means "unchanged".
        if value is not None or name == "description":
            setattr(experiment, name, value)
    experiment.updated_at = now
    await _commit_named(db, experiment.name)
    return experiment


async def delete_experiment(db: AsyncSession, experiment: Experiment, *, events: Events) -> None:
    """Delete an experiment and its metrics; versions it produced stay, unlinked."""
    await db.execute(
        update(ModelVersion)
        .where(ModelVersion.experiment_id == experiment.id)
        .values(experiment_id=None)
    )
    await db.execute(
        delete(ExperimentMetric).where(ExperimentMetric.experiment_id == experiment.id)
    )
    await db.delete(experiment)
    await db.commit()
    await events.record(
        Action(
            name="experiment.deleted",
            target_type="experiment",
            target_id=str(experiment.id),
            owner_id=experiment.owner_id,
            details={"name": experiment.name},
        )
    )


async def log_metrics(
    db: AsyncSession, experiment: Experiment, points: Sequence[MetricPoint]
) -> list[ExperimentMetric]:
    """Append points to the experiment's metric history."""
    now = utcnow()
    rows = [
        ExperimentMetric(
            experiment_id=experiment.id,
            key=p.key,
            value=p.value,
            step=p.step,
            timestamp=p.timestamp or now,
        )
        for p in points
    ]
    db.add_all(rows)
    experiment.updated_at = now
    await db.commit()
    return rows


async def record_version_metrics(
    db: AsyncSession, experiment_id: uuid.UUID, metrics: Mapping[str, float]
) -> None:
    """Append the metrics a version logged to the run it is linked to, each at its key's latest
    step (0 for a new key), so they are the run's latest values, as `mlflow.log_metric` at the
    end of a run would make them. Flushes only: the caller commits.
    """
    if not metrics:
        return
    m = ExperimentMetric
    rows = await db.execute(
        select(m.key, func.max(m.step))
        .where(m.experiment_id == experiment_id, m.key.in_(list(metrics)))
        .group_by(m.key)
    )
    steps: dict[str, int] = dict(rows.all())
    now = utcnow()
    db.add_all(
        m(experiment_id=experiment_id, key=key, value=value, step=steps.get(key, 0), timestamp=now)
        for key, value in metrics.items()
    )
    await db.execute(
        update(Experiment).where(Experiment.id == experiment_id).values(updated_at=now)
    )
    await db.flush()


async def metric_history(
    db: AsyncSession, experiment: Experiment, *, key: str | None = None
) -> list[ExperimentMetric]:
    """Return the metric history, by key then step."""
    query = select(ExperimentMetric).where(ExperimentMetric.experiment_id == experiment.id)
    if key is not None:
        query = query.where(ExperimentMetric.key == key)
    rows = await db.scalars(
        query.order_by(
            ExperimentMetric.key,
            ExperimentMetric.step,
            ExperimentMetric.timestamp,
            ExperimentMetric.id,
        )
    )
    return list(rows)


async def metric_series(
    db: AsyncSession, experiment: Experiment
) -> dict[str, list[tuple[int, float]]]:
    """Return each metric's (step, value) points in step order, as plain tuples (for charts:
    thousands of points cost no ORM objects)."""
    rows = await db.execute(
        select(ExperimentMetric.key, ExperimentMetric.step, ExperimentMetric.value)
        .where(ExperimentMetric.experiment_id == experiment.id)
        .order_by(
            ExperimentMetric.key,
            ExperimentMetric.step,
            ExperimentMetric.timestamp,
            ExperimentMetric.id,
        )
    )
    series: dict[str, list[tuple[int, float]]] = {}
    for key, step, value in rows:
        series.setdefault(key, []).append((step, value))
    return series


async def latest_metrics(db: AsyncSession, experiment: Experiment) -> list[ExperimentMetric]:
    """Return the latest point (highest step, then newest) of each metric key."""
    rank = (
        func.row_number()
        .over(
            partition_by=ExperimentMetric.key,
            order_by=(ExperimentMetric.step.desc(), ExperimentMetric.id.desc()),
        )
        .label("rank")
    )
    ranked = (
        select(ExperimentMetric.id, rank)
        .where(ExperimentMetric.experiment_id == experiment.id)
        .subquery()
    )
    rows = await db.scalars(
        select(ExperimentMetric)
        .join(ranked, ranked.c.id == ExperimentMetric.id)
        .where(ranked.c.rank == 1)
        .order_by(ExperimentMetric.key)
    )
    return list(rows)


async def produced_versions(db: AsyncSession, experiment: Experiment) -> list[ExperimentVersion]:
    """Return the model versions linked to the experiment."""
    rows = await db.execute(
        select(
            ModelVersion.id,
            ModelVersion.model_id,
            RegisteredModel.name,
            ModelVersion.version,
            ModelVersion.stage,
        )
        .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(ModelVersion.experiment_id == experiment.id)
        .order_by(RegisteredModel.name, ModelVersion.version)
    )
    return [
        ExperimentVersion(
            id=row.id,
            model_id=row.model_id,
            model_name=row.name,
            version=row.version,
            stage=row.stage,
        )
        for row in rows
    ]


async def _commit_named(db: AsyncSession, name: str) -> None:
    try:
        await db.commit()
    except IntegrityError as exc:
        await db.rollback()
        raise Conflict(f"an experiment named {name!r} exists") from exc
