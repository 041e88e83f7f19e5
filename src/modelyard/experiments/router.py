"""Routes of `/api/v1/experiments`."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, status
from pydantic import Field

from modelyard.auth.deps import CurrentUser
from modelyard.changes.deps import EventsDep
from modelyard.db.deps import SessionDep
from modelyard.db.tables import Experiment, ExperimentMetric
from modelyard.edge.routing import make_router
from modelyard.experiments import service
from modelyard.experiments.schemas import (
    MAX_METRICS_PER_REQUEST,
    ExperimentCreate,
    ExperimentDetail,
    ExperimentListItem,
    ExperimentRead,
    ExperimentUpdate,
    MetricPoint,
    MetricRead,
)
from modelyard.schemas import Page, PageDep

router = make_router(prefix="/api/v1/experiments", tags=["experiments"])


async def owned_experiment(
    experiment_id: uuid.UUID, user: CurrentUser, db: SessionDep
) -> Experiment:
    """Return the caller's experiment `{experiment_id}` (404 for anyone else's)."""
    return await service.get_experiment(db, user, experiment_id)


OwnedExperiment = Annotated[Experiment, Depends(owned_experiment)]
MetricPoints = Annotated[list[MetricPoint], Field(min_length=1, max_length=MAX_METRICS_PER_REQUEST)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ExperimentRead)
async def create_experiment(
    body: ExperimentCreate, user: CurrentUser, db: SessionDep
) -> Experiment:
    """Create an experiment."""
    return await service.create_experiment(db, user, body)


@router.get("", response_model=Page[ExperimentListItem])
async def list_experiments(
    user: CurrentUser,
    db: SessionDep,
    page: PageDep,
    search: Annotated[str | None, Query(max_length=200)] = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    sort: Annotated[
        str | None,
        Query(
            max_length=260,
            description="`created_at` (default), `updated_at`, `ended_at`, `name`, or "
            "`metrics.<key>`: by the run's latest value of that metric (runs without it last)",
        ),
    ] = None,
    order: Literal["asc", "desc"] = "desc",
    filters: Annotated[
        list[str],
        Query(
            alias="filter",
            max_length=10,
            description="`metrics.<key><op><number>`, op one of `<`, `<=`, `>`, `>=`, `=`, `!=`: "
            "keeps the runs whose latest value passes; repeat to combine (and)",
        ),
    ] = [],  # noqa: B006 - FastAPI copies query defaults
) -> Page[ExperimentListItem]:
    """List the caller's experiments with their parameters and latest metrics, newest first or
    sorted and filtered by a metric."""
    rows, total = await service.list_experiments(
        db,
        user,
        page=page,
        search=search,
        tag=tag,
        sort=service.parse_sort(sort),
        order=order,
        filters=[service.MetricFilter.parse(f) for f in filters],
    )
    latest = await service.latest_values(db, [row.id for row in rows])
    return Page(
        items=[
            ExperimentListItem(
                **ExperimentRead.model_validate(row).model_dump(), latest_metrics=latest[row.id]
            )
            for row in rows
        ],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{experiment_id}", response_model=ExperimentDetail)
async def get_experiment(experiment: OwnedExperiment, db: SessionDep) -> dict[str, Any]:
    """Show an experiment with the latest value of each metric and the versions it produced."""
    return {
        **ExperimentRead.model_validate(experiment).model_dump(),
        "metrics": await service.latest_metrics(db, experiment),
        "model_versions": await service.produced_versions(db, experiment),
    }


@router.patch("/{experiment_id}", response_model=ExperimentRead)
async def update_experiment(
    experiment: OwnedExperiment, body: ExperimentUpdate, db: SessionDep
) -> Experiment:
    """Change an experiment's name, description, parameters, tags or status; a status other
    than `running` ends the run (`ended_at`)."""
    return await service.update_experiment(db, experiment, body)


@router.delete("/{experiment_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_experiment(experiment: OwnedExperiment, db: SessionDep, events: EventsDep) -> None:
    """Delete an experiment; the versions it produced stay, with `experiment_id` null."""
    await service.delete_experiment(db, experiment, events=events)


@router.post(
    "/{experiment_id}/metrics",
    status_code=status.HTTP_201_CREATED,
    response_model=list[MetricRead],
)
async def log_metrics(
    experiment: OwnedExperiment, body: MetricPoints, db: SessionDep
) -> list[ExperimentMetric]:
    """Append points to the metric history; answers the points as stored."""
    return await service.log_metrics(db, experiment, body)


@router.get("/{experiment_id}/metrics", response_model=list[MetricRead])
async def metric_history(
    experiment: OwnedExperiment,
    db: SessionDep,
    key: Annotated[str | None, Query(max_length=250)] = None,
) -> list[ExperimentMetric]:
    """Return the metric history (one key with `?key=`), by key then step."""
    return await service.metric_history(db, experiment, key=key)
