"""`PredictionLogDep`: the prediction log writer, which an erasure flushes first."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from modelyard.deps import component
from modelyard.predictions.log.writer import PredictionLog

PredictionLogDep = Annotated[PredictionLog, Depends(component("prediction_log"))]
