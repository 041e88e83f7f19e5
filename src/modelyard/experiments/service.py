"""Use cases of experiments: CRUD, metric history, the versions an experiment produced."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.db import sql
from modelyard.db.tables import (
    Experiment,
    ExperimentMetric,
    ModelVersion,
    RegisteredModel,
    User,
)
from modelyard.db.types import utcnow
from modelyard.errors import Conflict, NotFound
from modelyard.events import Action, Events
from modelyard.experiments.schemas import (
    ExperimentCreate,
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


async def list_experiments(
    db: AsyncSession,
    user: User,
    *,
    page: PageParams,
    search: str | None = None,
    tag: str | None = None,
) -> tuple[Sequence[Experiment], int]:
    """Return one page of the caller's experiments, newest first, and their total."""
    query = owned_experiments(user)
    if search:
        query = query.where(sql.text_search([Experiment.name, Experiment.description], search))
    if tag:
        query = query.where(sql.json_array_contains(db, Experiment.tags, tag))
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(
        query.order_by(Experiment.created_at.desc(), Experiment.id)
        .limit(page.limit)
        .offset(page.offset)
    )
    return list(rows), total or 0


async def update_experiment(
    db: AsyncSession, experiment: Experiment, data: ExperimentUpdate
) -> Experiment:
    """Change an experiment's name, description, parameters, tags or status."""
    for name, value in data.model_dump(exclude_unset=True).items():
        # Only the description can be cleared; null for the others means "unchanged".
        if value is not None or name == "description":
            setattr(experiment, name, value)
    experiment.updated_at = utcnow()
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
