"""`StoreDep`: the process's artifact store, for routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from modelyard.artifacts.store import ArtifactStore
from modelyard.deps import component

StoreDep = Annotated[ArtifactStore, Depends(component("store"))]
