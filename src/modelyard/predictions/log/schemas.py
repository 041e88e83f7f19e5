"""API types of the prediction log and its analytics: what `/api/v1/predictions` and
`/api/v1/analytics` answer, and the query parameters they share with the traffic stats."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Query
from pydantic import AwareDatetime, Field

from modelyard.schemas import Page, ReadModel

# Characters of an error a list shows; the prediction itself shows it whole. Cut in SQL, so a
# page of rows logged before errors had a budget does not carry megabytes each.
LIST_ERROR_MAX_CHARS = 1024
LIST_ERROR_CUT = "... (cut short in lists; the prediction itself shows it whole)"


class Include(StrEnum):
    PAYLOADS = "payloads"


class PredictionRead(ReadModel):
    id: uuid.UUID
    model_id: uuid.UUID | None
    model_name: str | None = None
    version: int | None
    status: str
    error: str | None = Field(
        description=f"in lists, at most {LIST_ERROR_MAX_CHARS} characters unless `include=payloads`"
    )
    protocol: str
    inputs: Any = Field(
        description="null in lists unless `include=payloads`; a payload larger than the log's "
        'budget is stored as {"truncated": true, "bytes": N, "preview": "..."}'
    )
    outputs: Any = Field(description="as `inputs`")
    n_rows: int
    inference_time_ms: float | None
    created_at: datetime
    user_id: uuid.UUID | None
    api_key_id: uuid.UUID | None
    shadow: bool = Field(
        default=False,
        description="a shadow prediction: a traffic policy's copy of the prediction `shadow_of`, "
        "made after the caller was answered (its inputs are the primary's)",
    )
    shadow_of: uuid.UUID | None = None


class PredictionPage(Page[PredictionRead]):
    total_is_estimate: bool = Field(
        description=f"`total` is exact up to {10_000:,} predictions; past it an estimate, and true"
    )
    next: str | None = Field(
        description="pass as `cursor` for the page after this one; null on the last page"
    )


class VersionStats(ReadModel):
    model_id: uuid.UUID
    model_name: str | None
    version: int | None
    total_predictions: int
    failed_predictions: int
    avg_inference_time_ms: float | None
    p50_inference_time_ms: float | None
    p95_inference_time_ms: float | None
    p99_inference_time_ms: float | None
    last_prediction_at: datetime


class DailyUsage(ReadModel):
    date: date
    prediction_count: int
    failed_count: int
    avg_inference_time_ms: float | None


class HourlyUsage(ReadModel):
    hour: datetime = Field(description="the start of the UTC hour")
    prediction_count: int
    failed_count: int
    avg_inference_time_ms: float | None


ModelFilter = Annotated[uuid.UUID | None, Query(description="only this model's predictions")]
Since = Annotated[
    AwareDatetime | None, Query(description="from this time on, inclusive (with a time zone)")
]
Until = Annotated[AwareDatetime | None, Query(description="before this time (with a time zone)")]
