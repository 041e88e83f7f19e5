"""Registry rules decided by the rows alone (both databases): version numbers, one production
version per model, aliases, soft deletion, and whose models a caller may reach."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from modelyard.db.engine import make_sessionmaker
from modelyard.db.tables import ModelAlias, ModelVersion, RegisteredModel
from modelyard.errors import Conflict
from modelyard.registry import service
from modelyard.registry.schemas import ModelStatus, Stage, UploadForm
from tests.support.events import RecordedEvents
from tests.support.rows import add_user, make_model


async def next_version(db: AsyncSession, owner_id: uuid.UUID, name: str) -> tuple[uuid.UUID, int]:
    """Take the next version number of `name` as an upload does (the model made if new)."""
    taken = await service._next_version_number(db, owner_id, UploadForm(name=name), None)
    await db.commit()
    return taken


async def stages(db: AsyncSession, model: RegisteredModel) -> dict[int, str]:
    rows = await db.execute(
        select(ModelVersion.version, ModelVersion.stage)
        .where(ModelVersion.model_id == model.id)
        .execution_options(populate_existing=True)
    )
    return dict(rows.all())


async def test_versions_of_a_model_are_numbered_from_one_per_owner(db: AsyncSession) -> None:
    alice, bob = await add_user(db), await add_user(db)

    first = await next_version(db, alice.id, "iris")
    second = await next_version(db, alice.id, "iris")
    bobs = await next_version(db, bob.id, "iris")

    assert (first[1], second[1]) == (1, 2)
    assert first[0] == second[0]  # one model, made by the first upload
    assert bobs[1] == 1  # the same name is another model for another owner
    assert bobs[0] != first[0]


async def test_concurrent_uploads_take_distinct_version_numbers(engine: AsyncEngine) -> None:
    sessions = make_sessionmaker(engine)
    async with sessions() as db:
        owner = await add_user(db)

    async def upload() -> int:
        async with sessions() as db:
            return (await next_version(db, owner.id, "iris"))[1]

    numbers = await asyncio.gather(*(upload() for _ in range(6)))

    assert sorted(numbers) == [1, 2, 3, 4, 5, 6]


async def test_an_archived_models_name_takes_no_new_version(db: AsyncSession) -> None:
    owner = await add_user(db)
    model, _ = await make_model(db, owner.id, name="iris")
    await service.archive_model(db, model, events=RecordedEvents())

    with pytest.raises(Conflict, match="archived; choose another name"):
        await next_version(db, owner.id, "iris")


async def test_promoting_a_version_deprecates_the_production_one(db: AsyncSession) -> None:
    owner = await add_user(db)
    model, _ = await make_model(db, owner.id, versions=3)
    events = RecordedEvents()

    await service.transition_stage(db, model, 1, Stage.PRODUCTION, events=events)
    await service.transition_stage(db, model, 2, Stage.STAGING, events=events)
    await service.transition_stage(db, model, 3, Stage.PRODUCTION, events=events)

    assert await stages(db, model) == {1: "deprecated", 2: "staging", 3: "production"}
    assert [(a.details["from"], a.details["to"]) for a in events.actions] == [
        ("development", "production"),
        ("development", "staging"),
        ("development", "production"),
    ]
    # Every change is announced, so that every worker resolves the model afresh.
    assert [e.model_id for e in events.announced] == [model.id] * 3


async def test_moving_a_version_to_its_own_stage_changes_and_records_nothing(
    db: AsyncSession,
) -> None:
    owner = await add_user(db)
    model, _ = await make_model(db, owner.id)
    events = RecordedEvents()
    await service.transition_stage(db, model, 1, Stage.STAGING, events=events)

    await service.transition_stage(db, model, 1, Stage.STAGING, events=events)

    assert events.names() == ["model_version.stage_changed"]


async def test_an_archived_model_takes_no_stage_change(db: AsyncSession) -> None:
    owner = await add_user(db)
    model, _ = await make_model(db, owner.id)
    await service.archive_model(db, model, events=RecordedEvents())

    with pytest.raises(Conflict, match="is archived"):
        await service.transition_stage(db, model, 1, Stage.PRODUCTION, events=RecordedEvents())


async def test_deleting_a_model_archives_it_and_every_version_and_keeps_the_rows(
    db: AsyncSession,
) -> None:
    owner = await add_user(db)
    model, versions = await make_model(db, owner.id, versions=2)
    await service.transition_stage(db, model, 2, Stage.PRODUCTION, events=RecordedEvents())
    events = RecordedEvents()

    await service.archive_model(db, model, events=events)

    assert await stages(db, model) == {1: "archived", 2: "archived"}
    row = await db.scalar(
        select(RegisteredModel)
        .where(RegisteredModel.id == model.id)
        .execution_options(populate_existing=True)
    )
    assert row is not None
    assert row.status == ModelStatus.ARCHIVED
    assert {v.storage_key for v in versions} == set(
        await db.scalars(select(ModelVersion.storage_key))
    )  # the artifacts stay referenced: nothing is erased
    assert events.names() == ["model.deleted"]


async def test_an_alias_moves_and_its_record_names_where_it_pointed(db: AsyncSession) -> None:
    owner = await add_user(db)
    model, versions = await make_model(db, owner.id, versions=2)
    events = RecordedEvents()

    await service.set_alias(db, model, "champion", 1, events=events)
    await service.set_alias(db, model, "champion", 2, events=events)
    await service.set_alias(db, model, "champion", 2, events=events)  # already there

    alias = await db.scalar(select(ModelAlias).where(ModelAlias.model_id == model.id))
    assert alias is not None
    assert alias.version_id == versions[1].id
    assert [(a.details["previous"], a.details["version"]) for a in events.actions] == [
        (None, 1),
        (1, 2),
    ]


async def test_an_archived_version_takes_no_alias(db: AsyncSession) -> None:
    owner = await add_user(db)
    model, _ = await make_model(db, owner.id, versions=2)
    await service.archive_version(db, model, 1, events=RecordedEvents())

    with pytest.raises(Conflict, match=r"version 1 of model .* is archived"):
        await service.set_alias(db, model, "champion", 1, events=RecordedEvents())


async def test_deleting_an_alias_records_the_version_it_left(db: AsyncSession) -> None:
    owner = await add_user(db)
    model, _ = await make_model(db, owner.id, versions=2)
    await service.set_alias(db, model, "champion", 2, events=RecordedEvents())
    events = RecordedEvents()

    await service.delete_alias(db, model, "champion", events=events)

    assert await db.scalar(select(ModelAlias).where(ModelAlias.model_id == model.id)) is None
    [action] = events.actions
    assert (action.name, action.details["previous"], action.details["version"]) == (
        "alias.changed",
        2,
        None,
    )
    with pytest.raises(service.AliasNotFound):
        await service.delete_alias(db, model, "champion", events=events)


async def test_another_owners_model_is_not_found_by_name_or_id_but_an_admin_reaches_it(
    db: AsyncSession,
) -> None:
    alice, bob = await add_user(db), await add_user(db)
    admin = await add_user(db, is_admin=True)
    model, _ = await make_model(db, alice.id, name="iris")

    for ref in ("iris", str(model.id)):
        with pytest.raises(service.ModelNotFound):
            await service.get_model(db, bob, ref)
    assert (await service.get_model(db, alice, "iris")).id == model.id
    assert (await service.get_model(db, admin, str(model.id))).id == model.id
    # Names resolve among the caller's own models, an admin's too.
    with pytest.raises(service.ModelNotFound):
        await service.get_model(db, admin, "iris")
