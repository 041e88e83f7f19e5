"""What an admin sees of an account: the user, and how much it owns in each domain."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.accounts.schemas import UserDetail
from modelyard.auth import service as auth_service
from modelyard.auth.schemas import UserRead
from modelyard.experiments import service as experiments_service
from modelyard.registry import queries as registry_queries


@dataclass(frozen=True, slots=True)
class OwnedCounts:
    """How much an account owns, in the database (its files live in the store only)."""

    models: int
    versions: int
    experiments: int
    active_api_keys: int


async def count_owned(db: AsyncSession, user_id: uuid.UUID) -> OwnedCounts:
    """Count what `user_id` owns, each domain counting its own (over the owner indexes)."""
    models, versions = await registry_queries.count_owned(db, user_id)
    return OwnedCounts(
        models=models,
        versions=versions,
        experiments=await experiments_service.count_experiments(db, user_id),
        active_api_keys=await auth_service.count_active_api_keys(db, user_id),
    )


async def describe_user(db: AsyncSession, user_id: uuid.UUID) -> UserDetail:
    """Return a user with how much it owns, for an admin.

    Raises:
        NotFound: no such user.
    """
    user = await auth_service.get_user(db, user_id)
    counts = await count_owned(db, user_id)
    return UserDetail.model_validate(
        {
            **UserRead.model_validate(user).model_dump(),
            "model_count": counts.models,
            "version_count": counts.versions,
            "experiment_count": counts.experiments,
            "active_api_key_count": counts.active_api_keys,
        }
    )
