"""Experiment rules decided by the rows alone (both databases): names per owner, the metric
history and its latest values, finishing a run, deletion leaving its versions."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.db.tables import Experiment, ModelVersion, User
from modelyard.errors import Conflict
from modelyard.experiments import service
from modelyard.experiments.schemas import (
    ExperimentCreate,
    ExperimentStatus,
    ExperimentUpdate,
    MetricPoint,
)
from tests.support.events import RecordedEvents
from tests.support.rows import add_user, make_model


async def new_run(db: AsyncSession, user: User, name: str = "sweep") -> Experiment:
    return await service.create_experiment(db, user, ExperimentCreate(name=name))


def points(*values: tuple[str, float, int]) -> list[MetricPoint]:
    return [MetricPoint(key=key, value=value, step=step) for key, value, step in values]


async def test_a_name_is_one_experiment_per_owner(db: AsyncSession) -> None:
    alice, bob = await add_user(db), await add_user(db)
    alice_id = alice.id
    await new_run(db, alice)
    assert (await new_run(db, bob)).owner_id == bob.id

    with pytest.raises(Conflict, match="an experiment named 'sweep' exists"):
        await new_run(db, alice)
    assert await service.count_experiments(db, alice_id) == 1


async def test_another_users_experiment_is_not_found(db: AsyncSession) -> None:
    alice, bob = await add_user(db), await add_user(db)
    run = await new_run(db, alice)

    with pytest.raises(service.ExperimentNotFound):
        await service.get_experiment(db, bob, run.id)
    assert (await service.get_experiment(db, alice, run.id)).id == run.id


async def test_the_history_keeps_every_point_by_key_then_step(db: AsyncSession) -> None:
    user = await add_user(db)
    run = await new_run(db, user)
    await service.log_metrics(db, run, points(("loss", 0.9, 2), ("acc", 0.5, 1), ("loss", 1.2, 1)))
    await service.log_metrics(db, run, points(("loss", 0.7, 3), ("loss", 0.8, 3)))

    history = await service.metric_history(db, run)

    assert [(m.key, m.step, m.value) for m in history] == [
        ("acc", 1, 0.5),
        ("loss", 1, 1.2),
        ("loss", 2, 0.9),
        ("loss", 3, 0.7),
        ("loss", 3, 0.8),  # a second value at one step is kept, after the first
    ]
    assert [m.value for m in await service.metric_history(db, run, key="acc")] == [0.5]
    assert await service.metric_series(db, run) == {
        "acc": [(1, 0.5)],
        "loss": [(1, 1.2), (2, 0.9), (3, 0.7), (3, 0.8)],
    }


async def test_the_latest_value_is_the_highest_steps_newest_not_the_last_logged(
    db: AsyncSession,
) -> None:
    user = await add_user(db)
    run = await new_run(db, user)
    await service.log_metrics(db, run, points(("loss", 0.4, 5), ("acc", 0.5, 0)))
    await service.log_metrics(db, run, points(("loss", 0.9, 1)))  # late, for an earlier step
    await service.log_metrics(db, run, points(("acc", 0.6, 0)))  # the same step again

    latest = await service.latest_metrics(db, run)

    assert [(m.key, m.step, m.value) for m in latest] == [("acc", 0, 0.6), ("loss", 5, 0.4)]


async def test_a_versions_metrics_become_the_runs_latest_values(db: AsyncSession) -> None:
    user = await add_user(db)
    run = await new_run(db, user)
    await service.log_metrics(db, run, points(("acc", 0.5, 7)))

    await service.record_version_metrics(db, run.id, {"acc": 0.75, "f1": 0.6})
    await db.commit()

    latest = await service.latest_metrics(db, run)
    assert [(m.key, m.step, m.value) for m in latest] == [("acc", 7, 0.75), ("f1", 0, 0.6)]


@pytest.mark.parametrize(
    "status", [ExperimentStatus.COMPLETED, ExperimentStatus.FAILED, ExperimentStatus.KILLED]
)
async def test_finishing_a_run_sets_when_it_ended_and_running_again_clears_it(
    db: AsyncSession, status: ExperimentStatus
) -> None:
    user = await add_user(db)
    run = await new_run(db, user)
    assert (run.status, run.ended_at) == ("running", None)

    await service.update_experiment(db, run, ExperimentUpdate(status=status))
    ended_at = run.ended_at
    assert run.status == status
    assert ended_at is not None
    await service.update_experiment(db, run, ExperimentUpdate(description="again the same"))
    assert run.ended_at == ended_at  # other changes leave it
    await service.update_experiment(db, run, ExperimentUpdate(status=ExperimentStatus.RUNNING))

    assert run.status == "running"
    assert run.ended_at is None


async def test_null_leaves_a_field_unchanged_but_clears_the_description(
    db: AsyncSession,
) -> None:
    user = await add_user(db)
    run = await service.create_experiment(
        db, user, ExperimentCreate(name="sweep", description="grid", tags=["a"])
    )

    await service.update_experiment(
        db, run, ExperimentUpdate.model_validate({"description": None, "tags": None})
    )

    assert (run.description, run.tags, run.name) == (None, ["a"], "sweep")


async def test_renaming_onto_another_runs_name_is_a_conflict(db: AsyncSession) -> None:
    user = await add_user(db)
    await new_run(db, user, "first")
    second = await new_run(db, user, "second")

    with pytest.raises(Conflict):
        await service.update_experiment(db, second, ExperimentUpdate(name="first"))


async def test_deleting_a_run_keeps_its_versions_unlinked(db: AsyncSession) -> None:
    user = await add_user(db)
    run = await new_run(db, user)
    await service.log_metrics(db, run, points(("loss", 0.5, 1)))
    _, [version] = await make_model(db, user.id)
    version.experiment_id = run.id
    await db.commit()
    assert [v.version for v in await service.produced_versions(db, run)] == [1]
    events = RecordedEvents()

    await service.delete_experiment(db, run, events=events)

    kept = await db.scalar(
        select(ModelVersion)
        .where(ModelVersion.id == version.id)
        .execution_options(populate_existing=True)
    )
    assert kept is not None
    assert kept.experiment_id is None
    assert await service.count_experiments(db, user.id) == 0
    assert events.names() == ["experiment.deleted"]
