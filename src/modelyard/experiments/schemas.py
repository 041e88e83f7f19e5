"""API types of experiments and their metric history."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from modelyard.registry.schemas import Description, MetricName, Stage, Tags
from modelyard.schemas import JsonObject, ReadModel, StrictModel

ExperimentName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
MAX_METRICS_PER_REQUEST = 1000


class ExperimentStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"


class ExperimentCreate(StrictModel):
    name: ExperimentName
    description: Description | None = None
    parameters: JsonObject = Field(default_factory=dict)
    tags: Tags = Field(default_factory=list)


class ExperimentSort(StrEnum):
    """What the list can be ordered by, besides `metrics.<key>`."""

    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"
    ENDED_AT = "ended_at"
    NAME = "name"


class ExperimentUpdate(StrictModel):
    name: ExperimentName | None = None
    description: Description | None = None
    parameters: JsonObject | None = None
    tags: Tags | None = None
    status: ExperimentStatus | None = None


class MetricPoint(StrictModel):
    key: MetricName
    value: float
    step: Annotated[int, Field(ge=0, le=2**62)] = 0
    timestamp: datetime | None = None


class MetricRead(ReadModel):
    key: str
    value: float
    step: int
    timestamp: datetime


class ExperimentRead(ReadModel):
    id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    description: str | None
    parameters: dict[str, Any]
    tags: list[str]
    status: ExperimentStatus
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None = Field(
        description="when the status left `running` (null while it runs)"
    )


class ExperimentListItem(ExperimentRead):
    latest_metrics: dict[str, float] = Field(
        description="the latest value (highest step) of each metric key"
    )


class ExperimentVersion(ReadModel):
    id: uuid.UUID
    model_id: uuid.UUID
    model_name: str
    version: int
    stage: Stage


class ExperimentDetail(ExperimentRead):
    metrics: list[MetricRead] = Field(description="the latest point (highest step) of each key")
    model_versions: list[ExperimentVersion]
