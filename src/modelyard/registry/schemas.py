"""API types of the registry: models, versions, stages, aliases, upload fields."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints

from modelyard.schemas import JsonObject, ModelName, ReadModel, StrictModel
from modelyard.serving.formats import ModelFormat

MAX_TAGS = 50


class Stage(StrEnum):
    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"
    DEPRECATED = "deprecated"
    ARCHIVED = "archived"


class TaskType(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    CLUSTERING = "clustering"
    OTHER = "other"


class ModelFramework(StrEnum):
    """The library a version's model was made with.

    PyTorch, TensorFlow and Keras models are stored and served as their ONNX export (format
    `onnx`); the others in their own formats (modelyard.serving.formats.Framework: the runtime).
    """

    SKLEARN = "sklearn"
    ONNX = "onnx"
    XGBOOST = "xgboost"
    LIGHTGBM = "lightgbm"
    PYTORCH = "pytorch"
    TENSORFLOW = "tensorflow"
    KERAS = "keras"


EXPORTED_TO_ONNX = frozenset(
    {ModelFramework.PYTORCH, ModelFramework.TENSORFLOW, ModelFramework.KERAS}
)


class ModelStatus(StrEnum):
    ACTIVE = "active"
    ARCHIVED = "archived"


_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,63}")
RESERVED_ALIAS = re.compile(r"latest|v\d+")


def _alias_name(value: str) -> str:
    if not _ALIAS.fullmatch(value):
        raise ValueError(
            "an alias is 1-64 lowercase letters, digits, '_' or '-', starting with a letter"
        )
    if RESERVED_ALIAS.fullmatch(value):
        raise ValueError(f"alias {value!r} is reserved")
    return value


AliasName = Annotated[str, AfterValidator(_alias_name)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS)]
MetricName = Annotated[str, StringConstraints(min_length=1, max_length=250)]
Metrics = dict[MetricName, float]
Description = Annotated[str, StringConstraints(max_length=10_000)]


class FeatureSpec(StrictModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    type: Literal["float", "int", "bool", "str"] = "float"


class InputSchema(StrictModel):
    """The model's features, in the order the model takes them."""

    features: Annotated[list[FeatureSpec], Field(min_length=1, max_length=100_000)]

    def names(self) -> list[str]:
        return [f.name for f in self.features]


class UploadForm(StrictModel):
    """The multipart fields of an upload besides `file` (JSON ones arrive as JSON strings)."""

    name: ModelName
    description: Description | None = None
    framework: ModelFramework | None = None
    task_type: TaskType | None = None
    input_schema: InputSchema | None = None
    output_schema: JsonObject | None = None
    metrics: Metrics = Field(default_factory=dict)
    hyperparameters: JsonObject = Field(default_factory=dict)
    tags: Tags = Field(default_factory=list)
    metadata: JsonObject = Field(default_factory=dict)
    experiment_id: uuid.UUID | None = None
    reference_path: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="a CSV or Parquet file in the caller's file area: the version's drift "
        "reference, stored with it",
    )


UPLOAD_JSON_FIELDS = frozenset(
    {"input_schema", "output_schema", "metrics", "hyperparameters", "tags", "metadata"}
)
UPLOAD_FIELDS = frozenset(UploadForm.model_fields) | {"file"}


class ModelUpdate(StrictModel):
    description: Description | None = None
    task_type: TaskType | None = None
    tags: Tags | None = None


class VersionUpdate(StrictModel):
    description: Description | None = None
    metrics: Metrics | None = None
    hyperparameters: JsonObject | None = None
    tags: Tags | None = None
    metadata: JsonObject | None = None
    input_schema: InputSchema | None = None
    output_schema: JsonObject | None = None
    experiment_id: uuid.UUID | None = None


class StageChange(StrictModel):
    stage: Stage


class AliasTarget(StrictModel):
    version: Annotated[int, Field(ge=1)]


class VersionRead(ReadModel):
    id: uuid.UUID
    model_id: uuid.UUID
    model_name: str
    version: int
    stage: Stage
    framework: ModelFramework
    format: ModelFormat
    task_type: str | None
    file_size: int
    sha256: str
    description: str | None
    input_schema: dict[str, Any] | None
    output_schema: dict[str, Any] | None
    metrics: dict[str, float]
    hyperparameters: dict[str, Any]
    tags: list[str]
    metadata: dict[str, Any] = Field(validation_alias="metadata_")
    experiment_id: uuid.UUID | None
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class VersionSummary(ReadModel):
    id: uuid.UUID
    version: int
    stage: Stage
    framework: ModelFramework
    format: ModelFormat
    created_at: datetime


class ModelRead(ReadModel):
    id: uuid.UUID
    name: str
    owner_id: uuid.UUID
    description: str | None
    task_type: str | None
    tags: list[str]
    status: ModelStatus
    latest_version: int | None
    production_version: int | None
    version_count: int
    aliases: dict[str, int]
    created_at: datetime
    updated_at: datetime


class ModelDetail(ModelRead):
    versions: list[VersionSummary]


ModelSort = Literal["name", "-name", "created_at", "-created_at", "updated_at", "-updated_at"]
