"""`{model}` path segments resolved to the caller's `RegisteredModel`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path

from modelyard.auth.deps import CurrentUser
from modelyard.db.deps import SessionDep
from modelyard.db.tables import RegisteredModel
from modelyard.deps import component
from modelyard.registry import service
from modelyard.serving.probe import Prober

ModelRef = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The model's UUID, or its name among the caller's models",
    ),
]


async def owned_model(model: ModelRef, user: CurrentUser, db: SessionDep) -> RegisteredModel:
    """Return the model named by `{model}` that the caller may act on (404 otherwise)."""
    return await service.get_model(db, user, model)


OwnedModel = Annotated[RegisteredModel, Depends(owned_model)]
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1, description="The version number")]

# The upload probe of this process (a `serving` one has none: no upload routes either).
ProberDep = Annotated[Prober, Depends(component("prober"))]
