"""Prediction log test data: records of a prediction."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import orjson

from modelyard.db.tables import ModelVersion, RegisteredModel
from modelyard.db.types import utcnow
from modelyard.predictions.log.record import PredictionRecord


def make_record(**overrides: Any) -> PredictionRecord:
    """A successful one-row prediction, fields overridable."""
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "model_id": uuid.uuid4(),
        "version_id": uuid.uuid4(),
        "version": 1,
        "owner_id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "api_key_id": None,
        "protocol": "rest",
        "status": "success",
        "error": None,
        "inputs": [[5.1, 3.5, 1.4, 0.2]],
        "outputs": [0],
        "n_rows": 1,
        "inference_time_ms": 0.5,
        "created_at": utcnow(),
    }
    values.update(overrides)
    return PredictionRecord(**values)


def truncation(payload: object, *, budget: int) -> dict[str, Any]:
    """Check that a stored payload is the log's truncation marker within `budget`; return it."""
    assert isinstance(payload, dict), payload
    assert set(payload) == {"truncated", "bytes", "preview"}
    assert payload["truncated"] is True
    assert payload["bytes"] > budget
    assert len(orjson.dumps(payload)) <= budget
    return payload


def record_on(
    model: RegisteredModel,
    version: ModelVersion | None,
    caller: str | uuid.UUID,
    *,
    created_at: datetime | None = None,
    **overrides: Any,
) -> PredictionRecord:
    """A record of `caller` predicting with `version` of `model`."""
    return make_record(
        model_id=model.id,
        version_id=version.id if version else None,
        version=version.version if version else None,
        owner_id=model.owner_id,
        user_id=uuid.UUID(str(caller)),
        created_at=created_at or utcnow(),
        **overrides,
    )
