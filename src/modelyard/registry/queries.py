"""The one place registry objects are filtered by who may see them, or by whom they belong to."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from modelyard.db.tables import ModelVersion, RegisteredModel, User


def owned_by(
    user: User, owner_id: InstrumentedAttribute[Any] | ColumnElement[Any] | None = None
) -> ColumnElement[bool]:
    """Return the owner predicate: rows whose owner is `user` (no admin rule).

    `owner_id` is the column naming the owner: a model's by default, or the owner a logged
    prediction or a rollup recorded (`Prediction.owner_id`, `prediction_rollups.c.owner_id`). Lists ("my models") and names resolve among
    these; `owned_models` adds what admins may act on.
    """
    column = RegisteredModel.owner_id if owner_id is None else owner_id
    return column == user.id


def owned_models(user: User) -> Select[RegisteredModel]:
    """Select the models `user` may act on: its own; admins may act on every model."""
    query = select(RegisteredModel)
    if not user.is_admin:
        query = query.where(owned_by(user))
    return query


async def find_model(db: AsyncSession, user: User, ref: str) -> RegisteredModel | None:
    """Find a model by UUID (any model the caller may act on) or by name (among its own)."""
    try:
        model_id = uuid.UUID(ref)
    except ValueError:
        query = select(RegisteredModel).where(owned_by(user), RegisteredModel.name == ref)
    else:
        query = owned_models(user).where(RegisteredModel.id == model_id)
    return (await db.execute(query)).scalar_one_or_none()


async def owned_model_ids(db: AsyncSession, owner_id: uuid.UUID) -> list[uuid.UUID]:
    """Return the ids of every model `owner_id` owns, archived ones included."""
    return list(
        await db.scalars(select(RegisteredModel.id).where(RegisteredModel.owner_id == owner_id))
    )


async def owned_artifact_keys(db: AsyncSession, owner_id: uuid.UUID) -> list[str]:
    """Return the storage keys of the artifacts of every version `owner_id` owns."""
    models = select(RegisteredModel.id).where(RegisteredModel.owner_id == owner_id)
    return list(
        await db.scalars(select(ModelVersion.storage_key).where(ModelVersion.model_id.in_(models)))
    )


async def count_owned(db: AsyncSession, owner_id: uuid.UUID) -> tuple[int, int]:
    """Count the models `owner_id` owns (archived ones included) and their versions, in one
    query over the owner index."""
    models = select(RegisteredModel.id).where(RegisteredModel.owner_id == owner_id)
    row = (
        await db.execute(
            select(
                select(func.count()).select_from(models.subquery()).scalar_subquery(),
                select(func.count())
                .select_from(ModelVersion)
                .where(ModelVersion.model_id.in_(models))
                .scalar_subquery(),
            )
        )
    ).one()
    return int(row[0] or 0), int(row[1] or 0)
