"""API types of drift signals: a version's reference, and a drift report."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from modelyard.schemas import StrictModel

ReferenceSource = Literal["file", "served"]


class ReferenceFile(StrictModel):
    path: str = Field(
        min_length=1,
        max_length=1024,
        description="a CSV file (with a header row naming the features) or a Parquet file in the "
        "caller's file area",
    )


class FeatureSummary(BaseModel):
    """One feature of a reference; numbers only for numeric features."""

    name: str
    kind: Literal["numeric", "skipped"]
    reason: str | None = Field(default=None, description="why a skipped feature is not compared")
    count: int | None = Field(default=None, description="values that are finite numbers")
    missing: int | None = Field(default=None, description="empty, NaN or infinite values")
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    cuts: list[float] | None = Field(
        default=None, description="the inner decile edges: the bins of the stability index"
    )
    proportions: list[float] | None = Field(
        default=None, description="the reference's share in each bin (one more than the cuts)"
    )
    sample_size: int | None = Field(
        default=None, description="values kept for the Kolmogorov-Smirnov test"
    )


class ReferenceRead(BaseModel):
    model_id: uuid.UUID
    version_id: uuid.UUID
    version: int
    source: ReferenceSource = Field(
        description="`file`: a reference file given with PUT; `served`: the version's first "
        "served rows"
    )
    source_path: str | None = Field(description="the file, for a `file` reference")
    row_count: int = Field(description="rows the reference was computed from")
    created_at: datetime
    features: list[FeatureSummary]


class ReferenceInfo(BaseModel):
    source: ReferenceSource
    source_path: str | None
    row_count: int
    created_at: datetime


class DriftWindow(BaseModel):
    since: datetime
    until: datetime


class SampleInfo(BaseModel):
    rows: int = Field(description="input rows compared: the window's newest, up to `max_rows`")
    max_rows: int
    predictions: int = Field(description="logged predictions those rows came from")
    skipped_predictions: int = Field(
        description="predictions left out because the log kept no readable inputs for them "
        "(cut by the payload budget, or payloads not logged)"
    )
    skipped_rows: int = Field(description="the rows of the skipped predictions")
    first_at: datetime | None
    last_at: datetime | None


class Thresholds(BaseModel):
    psi_moderate: float
    psi_significant: float
    ks_p_value: float
    min_rows: int


class FeatureDriftRead(BaseModel):
    name: str
    drifted: bool
    skipped: str | None = Field(description="why the feature was not compared, if it was not")
    rows: int = Field(description="finite values of the feature in the sample")
    missing: int
    mean: float | None
    reference_mean: float | None
    psi: float | None = Field(description="population stability index over the reference's deciles")
    psi_level: Literal["stable", "moderate", "significant"] | None
    ks_statistic: float | None = Field(description="two-sample Kolmogorov-Smirnov statistic")
    ks_p_value: float | None
    ks_flagged: bool


class DriftRead(BaseModel):
    model_id: uuid.UUID
    model_name: str
    version: int
    version_id: uuid.UUID
    status: Literal["ok", "insufficient_data"] = Field(
        description="`insufficient_data`: fewer rows in the window than the tests need"
    )
    drifted: bool = Field(description="whether any feature drifted")
    window: DriftWindow
    reference: ReferenceInfo
    sample: SampleInfo
    thresholds: Thresholds
    features: list[FeatureDriftRead]
