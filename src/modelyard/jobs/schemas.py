"""API types of batch prediction jobs."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated
from urllib.parse import quote

from pydantic import AfterValidator, Field, StrictInt, computed_field, model_validator

from modelyard.files.service import InvalidPath, validate_path
from modelyard.registry.schemas import AliasName
from modelyard.schemas import ReadModel, StrictModel

BATCH_JOBS_PATH = "/api/v1/batch-jobs"


class JobFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def _file_path(raw: str) -> str:
    try:
        return validate_path(raw)
    except InvalidPath as exc:
        raise ValueError(exc.detail) from exc


FilePath = Annotated[str, AfterValidator(_file_path)]


class BatchJobCreate(StrictModel):
    model: str = Field(min_length=1, max_length=128, description="the model's name or UUID")
    version: Annotated[StrictInt, Field(ge=1)] | AliasName | None = Field(
        default=None,
        description="a version number, or an alias such as `champion`; default the version "
        "served without one (production, else the newest not archived)",
    )
    input_path: FilePath = Field(description="a CSV (or Parquet) file in the caller's area")
    output_path: FilePath = Field(description="where the results go in the caller's area")
    format: JobFormat = JobFormat.CSV

    @model_validator(mode="after")
    def _distinct_paths(self) -> BatchJobCreate:
        if self.input_path == self.output_path:
            raise ValueError("output_path must differ from input_path")
        return self


class BatchJobLinks(ReadModel):
    self: str
    cancel: str
    output: str = Field(description="downloads the results once the job has succeeded")


class BatchJobRead(ReadModel):
    id: uuid.UUID
    status: JobStatus
    model_id: uuid.UUID
    model_name: str
    version: int
    input_path: str
    output_path: str
    format: JobFormat
    rows_done: int
    rows_total: int | None = Field(description="known once the input has been counted")
    error: str | None
    cancel_requested: bool
    attempts: int = Field(description="runs started, counting resumptions after a worker died")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented computed-field form
    @property
    def links(self) -> BatchJobLinks:
        me = f"{BATCH_JOBS_PATH}/{self.id}"
        return BatchJobLinks(
            self=me,
            cancel=f"{me}/cancel",
            output=f"/api/v1/files/download/{quote(self.output_path)}",
        )


class BatchJobProgress(ReadModel):
    """A running job's progress, as `GET /api/v1/events` sends it (`batch_job.progress`)."""

    id: uuid.UUID
    status: JobStatus
    model_id: uuid.UUID
    model_name: str
    version: int
    rows_done: int
    rows_total: int | None
    updated_at: datetime
