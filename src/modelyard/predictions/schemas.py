"""API types of the native prediction route (documentation of what it reads and answers)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, Field


class PredictRequest(BaseModel):
    inputs: list[list[float] | dict[str, float]] = Field(
        description="rows of feature values, or records by feature name", min_length=1
    )


class PredictResponse(BaseModel):
    prediction_id: uuid.UUID
    model_id: uuid.UUID
    model_name: str
    version: int
    predictions: list[Any]
    probabilities: list[list[float]] | None = Field(
        None, description="classifiers that give probabilities only"
    )
    classes: list[Any] | None = None
    confidence: list[float] | None = None
    inference_time_ms: float
