"""`PredictorDep` and `TargetCacheDep`: the components the predict routes take."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Annotated

from fastapi import Depends

from modelyard.changes.hotcache import EpochCache
from modelyard.deps import component
from modelyard.predictions.predictor import Predictor
from modelyard.predictions.targets import Target

PredictorDep = Annotated[Predictor, Depends(component("predictor"))]
# A request's resolution to a version, remembered until a registry change (`targets`).
TargetCacheDep = Annotated[EpochCache[Hashable, Target], Depends(component("target_cache"))]
