"""Rows a service-level test starts from, inserted directly: accounts, models and versions
(an upload runs the probe and the store, which are not what those tests are about)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.db.tables import ModelVersion, RegisteredModel, User


async def add_user(db: AsyncSession, *, is_admin: bool = False, is_active: bool = True) -> User:
    """Insert an account (it never signs in with a password: the hash is a placeholder)."""
    user = User(
        email=f"user-{uuid.uuid4().hex[:10]}@example.com",
        password_hash="not-a-hash",
        is_admin=is_admin,
        is_active=is_active,
    )
    db.add(user)
    await db.commit()
    return user


async def make_model(
    db: AsyncSession, owner_id: str | uuid.UUID, *, name: str | None = None, versions: int = 1
) -> tuple[RegisteredModel, list[ModelVersion]]:
    """Insert a model and its versions as rows (uploads are slow and not what is tested here)."""
    model = RegisteredModel(
        owner_id=uuid.UUID(str(owner_id)),
        name=name or f"model-{uuid.uuid4().hex[:8]}",
        version_count=versions,
    )
    db.add(model)
    await db.flush()
    rows = []
    for number in range(1, versions + 1):
        key = uuid.uuid4().hex
        rows.append(
            ModelVersion(
                model_id=model.id,
                version=number,
                framework="sklearn",
                format="skops",
                storage_key=f"models/{key}.skops",
                file_size=1,
                sha256="0" * 64,
            )
        )
    db.add_all(rows)
    await db.commit()
    return model, rows
