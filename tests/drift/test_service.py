"""A version's drift reference set from a file of its owner's and deleted, through the service
(both databases, the local store): one reference per version, replaced by the next, the
version's named features required, each change recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.artifacts import ArtifactStore, make_store
from modelyard.auth.service import Caller
from modelyard.config import Settings
from modelyard.db.tables import FeatureReference, RegisteredModel, User
from modelyard.drift import service
from modelyard.drift.reference import MIN_REFERENCE_ROWS
from modelyard.files.service import file_key
from modelyard.files.tabular import TabularLimits
from modelyard.registry.service import VersionNotFound
from tests.support.events import RecordedEvents
from tests.support.rows import add_user, make_model

SCHEMA = {"features": [{"name": "a", "type": "float"}, {"name": "b", "type": "float"}]}


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[ArtifactStore]:
    built = make_store(settings)
    yield built
    await built.aclose()


async def put_csv(store: ArtifactStore, user: User, path: str, tmp_path: Path, mean: float) -> None:
    """Put a CSV of normal columns a and b (around `mean`) in `user`'s file area."""
    rng = np.random.default_rng(7)
    rows = rng.normal(mean, 1.0, size=(MIN_REFERENCE_ROWS * 2, 2))
    local = tmp_path / path
    local.write_text("a,b\n" + "".join(f"{x:.4f},{y:.4f}\n" for x, y in rows))
    await store.put_file(file_key(user.id, path), local)


async def set_reference(
    db: AsyncSession,
    user: User,
    model: RegisteredModel,
    path: str,
    store: ArtifactStore,
    tmp_path: Path,
    events: RecordedEvents,
) -> None:
    await service.set_reference_from_file(
        db,
        Caller(user, api_key_id=None),
        model,
        1,
        path=path,
        store=store,
        tmp_dir=tmp_path,
        limits=TabularLimits(),
        events=events,
    )


async def model_with_schema(db: AsyncSession, user: User) -> RegisteredModel:
    model, [version] = await make_model(db, user.id)
    version.input_schema = SCHEMA
    await db.commit()
    return model


async def test_a_reference_from_a_file_summarises_each_feature_and_is_recorded(
    db: AsyncSession, store: ArtifactStore, tmp_path: Path
) -> None:
    user = await add_user(db)
    model = await model_with_schema(db, user)
    await put_csv(store, user, "ref.csv", tmp_path, mean=5.0)
    events = RecordedEvents()

    await set_reference(db, user, model, "ref.csv", store, tmp_path, events)

    read = await service.get_reference(db, model, 1)
    assert (read.source, read.source_path, read.row_count) == (
        "file",
        "ref.csv",
        2 * MIN_REFERENCE_ROWS,
    )
    assert [f.name for f in read.features] == ["a", "b"]
    [recorded] = events.actions
    assert recorded.name == "reference.changed"
    assert {k: recorded.details[k] for k in ("source", "path", "rows")} == {
        "source": "file",
        "path": "ref.csv",
        "rows": 2 * MIN_REFERENCE_ROWS,
    }


async def test_a_new_reference_replaces_the_old_one(
    db: AsyncSession, store: ArtifactStore, tmp_path: Path
) -> None:
    user = await add_user(db)
    model = await model_with_schema(db, user)
    await put_csv(store, user, "old.csv", tmp_path, mean=0.0)
    await put_csv(store, user, "new.csv", tmp_path, mean=50.0)
    await set_reference(db, user, model, "old.csv", store, tmp_path, RecordedEvents())

    await set_reference(db, user, model, "new.csv", store, tmp_path, RecordedEvents())

    assert await db.scalar(select(func.count()).select_from(FeatureReference)) == 1
    assert (await service.get_reference(db, model, 1)).source_path == "new.csv"


async def test_a_version_without_named_features_takes_no_reference_file(
    db: AsyncSession, store: ArtifactStore, tmp_path: Path
) -> None:
    user = await add_user(db)
    model, _ = await make_model(db, user.id)  # no input schema
    await put_csv(store, user, "ref.csv", tmp_path, mean=0.0)

    with pytest.raises(service.NoFeatureNames):
        await set_reference(db, user, model, "ref.csv", store, tmp_path, RecordedEvents())
    assert await db.scalar(select(func.count()).select_from(FeatureReference)) == 0


async def test_deleting_a_reference_removes_it_once(
    db: AsyncSession, store: ArtifactStore, tmp_path: Path
) -> None:
    user = await add_user(db)
    model = await model_with_schema(db, user)
    await put_csv(store, user, "ref.csv", tmp_path, mean=0.0)
    await set_reference(db, user, model, "ref.csv", store, tmp_path, RecordedEvents())
    events = RecordedEvents()

    await service.delete_reference(db, model, 1, events=events)

    with pytest.raises(service.ReferenceNotFound):
        await service.get_reference(db, model, 1)
    with pytest.raises(service.ReferenceNotFound):
        await service.delete_reference(db, model, 1, events=events)
    [recorded] = events.actions  # removed: no source
    assert (recorded.name, recorded.details["source"]) == ("reference.changed", None)
    with pytest.raises(VersionNotFound):
        await service.delete_reference(db, model, 2, events=events)
