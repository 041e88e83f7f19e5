"""API types of a comparison of runs or model versions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

MIN_ITEMS = 2
MAX_ITEMS = 10

DriftStatus = Literal["ok", "drifted", "insufficient_data", "no_reference", "no_feature_names"]


class ComparedItem(BaseModel):
    """One compared run or version; the version fields are null for a run and the reverse."""

    id: uuid.UUID
    label: str = Field(description="`<model> v<version>` for a version, the name for a run")
    created_at: datetime
    # Versions
    model_id: uuid.UUID | None = None
    model_name: str | None = None
    version: int | None = None
    stage: str | None = None
    experiment_id: uuid.UUID | None = Field(
        default=None, description="the run a version is linked to"
    )
    # Runs
    status: str | None = None
    ended_at: datetime | None = None


class ComparedValues(BaseModel):
    """One parameter or metric across the items, in their order (null where an item has none)."""

    key: str
    values: list[Any]
    differs: bool = Field(description="whether the items do not all have the same value")


class ServingFigures(BaseModel):
    """A version's traffic in the window, from the per-minute/hour/day rollups, and its drift
    over the last 24 hours."""

    requests: int
    failures: int
    p50_inference_time_ms: float | None
    p95_inference_time_ms: float | None
    last_prediction_at: datetime | None
    drift: DriftStatus = Field(
        description="`ok`/`drifted`: the drift report's verdict over the last 24 hours; "
        "`insufficient_data`: too few rows; `no_reference`/`no_feature_names`: no report possible"
    )


class Comparison(BaseModel):
    kind: Literal["runs", "versions"]
    items: list[ComparedItem]
    params: list[ComparedValues] = Field(
        description="a run's parameters, a version's hyperparameters"
    )
    metrics: list[ComparedValues] = Field(
        description="a run's latest value of each metric, a version's logged metrics"
    )
    histories: dict[str, list[list[tuple[int, float]]]] = Field(
        description="per metric key, per item (in order) its history as [step, value] points "
        "(a version's: its run's); for overlaid charts"
    )
    serving: list[ServingFigures] | None = Field(
        description="versions only: per item, the serving figures since `since`"
    )
    since: datetime | None = Field(description="start of the serving window (versions)")
