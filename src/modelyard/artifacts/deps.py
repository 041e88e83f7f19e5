"""`StoreDep`: the process's artifact store, for routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modelyard.artifacts.store import ArtifactStore
from modelyard.state import app_state


async def get_store(request: Request) -> ArtifactStore:
    """Return the artifact store built in the lifespan."""
    return app_state(request).store


StoreDep = Annotated[ArtifactStore, Depends(get_store)]
