"""Account erasure (`DELETE /api/v1/users/{id}`, `DELETE /api/v1/auth/me`) and reading one user."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import TextClause, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from modelyard.changes.events import Action
from modelyard.db.tables import (
    ApiKey,
    Experiment,
    ExperimentMetric,
    ModelAlias,
    ModelVersion,
    Prediction,
    RefreshToken,
    RegisteredModel,
    User,
    WebSession,
    prediction_rollups,
)
from modelyard.db.types import utcnow
from modelyard.state import AppState
from modelyard.web import sessions as web_sessions
from tests.support import factories
from tests.support.factories import Account
from tests.support.problems import assert_problem, assert_unauthorized

USERS = "/api/v1/users"
ME = "/api/v1/auth/me"
REFRESH = "/api/v1/auth/refresh"
IRIS_ROW = [[5.1, 3.5, 1.4, 0.2]]


def state_of(app: FastAPI) -> AppState:
    state: AppState = app.state.modelyard
    return state


async def erase(client: httpx.AsyncClient, admin: Account, account_id: str) -> httpx.Response:
    return await client.delete(f"{USERS}/{account_id}", headers=admin.headers)


async def make_experiment(client: httpx.AsyncClient, account: Account, name: str) -> str:
    response = await client.post(
        "/api/v1/experiments", json={"name": name}, headers=account.headers
    )
    assert response.status_code == 201, response.text
    experiment_id: str = response.json()["id"]
    metrics = await client.post(
        f"/api/v1/experiments/{experiment_id}/metrics",
        json=[{"key": "loss", "value": 0.5}],
        headers=account.headers,
    )
    assert metrics.status_code == 201, metrics.text
    return experiment_id


async def upload_file(client: httpx.AsyncClient, account: Account, path: str) -> None:
    response = await client.post(
        "/api/v1/files/upload",
        files={"file": ("data.csv", b"a,b\n1,2\n", "text/csv")},
        data={"path": path},
        headers=account.headers,
    )
    assert response.status_code == 201, response.text


async def predict(client: httpx.AsyncClient, headers: dict[str, str], model: str) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/predict/{model}", json={"inputs": IRIS_ROW}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def owned_rows(app: FastAPI, account_id: str) -> dict[str, int]:
    """Count the rows in every table that still name the account."""
    uid = uuid.UUID(account_id)
    queries = {
        "users": select(func.count()).select_from(User).where(User.id == uid),
        "models": select(func.count())
        .select_from(RegisteredModel)
        .where(RegisteredModel.owner_id == uid),
        "versions": select(func.count())
        .select_from(ModelVersion)
        .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(RegisteredModel.owner_id == uid),
        "experiments": select(func.count())
        .select_from(Experiment)
        .where(Experiment.owner_id == uid),
        "api_keys": select(func.count()).select_from(ApiKey).where(ApiKey.user_id == uid),
        "refresh_tokens": select(func.count())
        .select_from(RefreshToken)
        .where(RefreshToken.user_id == uid),
        "web_sessions": select(func.count())
        .select_from(WebSession)
        .where(WebSession.user_id == uid),
        "predictions": select(func.count())
        .select_from(Prediction)
        .where((Prediction.user_id == uid) | (Prediction.owner_id == uid)),
        "rollups": select(func.count())
        .select_from(prediction_rollups)
        .where(prediction_rollups.c.owner_id == uid),
    }
    async with state_of(app).sessions() as db:
        return {name: int(await db.scalar(query) or 0) for name, query in queries.items()}


async def storage_keys(app: FastAPI, model_id: str) -> list[str]:
    async with state_of(app).sessions() as db:
        keys = await db.scalars(
            select(ModelVersion.storage_key).where(ModelVersion.model_id == uuid.UUID(model_id))
        )
        return list(keys)


async def logged(app: FastAPI) -> dict[uuid.UUID, Prediction]:
    state = state_of(app)
    await state.prediction_log.flush()
    async with state.sessions() as db:
        return {row.id: row for row in await db.scalars(select(Prediction))}


def record_actions(app: FastAPI) -> list[Action]:
    actions: list[Action] = []

    async def sink(action: Action) -> None:
        actions.append(action)

    state_of(app).events.on_action(sink)
    return actions


# --- GET /users/{id} --------------------------------------------------------------------------


async def test_admin_reads_a_user_with_what_it_owns(
    client: httpx.AsyncClient, admin: Account, user: Account, iris_skops: Path
) -> None:
    await factories.make_version(client, user, iris_skops, name="a")
    await factories.make_version(client, user, iris_skops, name="a")
    await factories.make_version(client, user, iris_skops, name="b")
    await make_experiment(client, user, "run")
    await factories.make_api_key(client, user)

    response = await client.get(f"{USERS}/{user.id}", headers=admin.headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == user.id
    assert body["email"] == user.email
    assert body["is_admin"] is False
    assert body["model_count"] == 2
    assert body["version_count"] == 3
    assert body["experiment_count"] == 1
    assert body["active_api_key_count"] == 1


async def test_reading_an_unknown_user_is_not_found(
    client: httpx.AsyncClient, admin: Account
) -> None:
    response = await client.get(f"{USERS}/{uuid.uuid4()}", headers=admin.headers)
    assert_problem(response, 404)


async def test_non_admin_cannot_read_a_user(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    response = await client.get(f"{USERS}/{other_user.id}", headers=user.headers)
    assert_problem(response, 403)


# --- DELETE /users/{id} -----------------------------------------------------------------------


async def test_erased_user_credentials_stop_working_at_once(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, user: Account
) -> None:
    key = await factories.make_api_key(client, user)
    # Both credentials were just checked: the caller cache remembers them.
    assert (await client.get(ME, headers=user.headers)).status_code == 200
    assert (await client.get(ME, headers={"X-API-Key": key})).status_code == 200

    response = await erase(client, admin, user.id)

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_unauthorized(await client.get(ME, headers=user.headers))
    assert_unauthorized(await client.get(ME, headers={"X-API-Key": key}))
    assert_unauthorized(await client.post(REFRESH, json={"refresh_token": user.refresh_token}))
    login = await client.post(
        "/api/v1/auth/login", json={"email": user.email, "password": user.password}
    )
    assert_unauthorized(login)


async def test_erasure_deletes_everything_the_user_owns(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, user: Account, iris_skops: Path
) -> None:
    version = await factories.make_version(client, user, iris_skops, name="iris")
    await factories.make_version(client, user, iris_skops, name="iris")
    alias = await client.put(
        "/api/v1/models/iris/aliases/champion", json={"version": 1}, headers=user.headers
    )
    assert alias.status_code == 200, alias.text
    experiment_id = await make_experiment(client, user, "run")
    await factories.make_api_key(client, user)
    state = state_of(app)
    async with state.sessions() as db:
        user_row = await db.get_one(User, uuid.UUID(user.id))
        await web_sessions.start_session(db, user_row, lifetime=timedelta(hours=1))
    before = await owned_rows(app, user.id)
    assert before["models"] == 1
    assert before["versions"] == 2
    assert before["experiments"] == 1
    assert before["api_keys"] == 1
    assert before["refresh_tokens"] >= 1
    assert before["web_sessions"] == 1

    assert (await erase(client, admin, user.id)).status_code == 204

    assert set((await owned_rows(app, user.id)).values()) == {0}
    model_id = version["model_id"]
    assert_problem(await client.get(f"/api/v1/models/{model_id}", headers=admin.headers), 404)
    assert_problem(
        await client.get(f"/api/v1/models/{model_id}/versions/1", headers=admin.headers), 404
    )
    assert_problem(await client.get(f"{USERS}/{user.id}", headers=admin.headers), 404)
    async with state.sessions() as db:
        assert await db.scalar(select(func.count()).select_from(ModelAlias)) == 0
        metrics = select(func.count()).select_from(ExperimentMetric)
        assert (
            await db.scalar(
                metrics.where(ExperimentMetric.experiment_id == uuid.UUID(experiment_id))
            )
            == 0
        )
    listed = await client.get(USERS, headers=admin.headers)
    assert user.id not in {item["id"] for item in listed.json()["items"]}


async def test_erasure_leaves_other_users_untouched(
    client: httpx.AsyncClient,
    app: FastAPI,
    admin: Account,
    user: Account,
    other_user: Account,
    iris_skops: Path,
    iris_bytes: bytes,
) -> None:
    await factories.make_version(client, user, iris_skops, name="iris")
    await upload_file(client, user, "data.csv")
    kept = await factories.make_version(client, other_user, iris_skops, name="iris")
    await upload_file(client, other_user, "data.csv")
    experiment_id = await make_experiment(client, other_user, "run")
    key = await factories.make_api_key(client, other_user)
    kept_keys = await storage_keys(app, kept["model_id"])
    before = await owned_rows(app, other_user.id)

    assert (await erase(client, admin, user.id)).status_code == 204

    assert await owned_rows(app, other_user.id) == before
    assert (await client.get(ME, headers=other_user.headers)).status_code == 200
    assert (await client.get(ME, headers={"X-API-Key": key})).status_code == 200
    model = await client.get("/api/v1/models/iris", headers=other_user.headers)
    assert model.status_code == 200
    assert model.json()["id"] == kept["model_id"]
    download = await client.get(
        "/api/v1/models/iris/versions/1/download", headers=other_user.headers
    )
    assert download.status_code == 200
    assert download.content == iris_bytes
    data = await client.get("/api/v1/files/download/data.csv", headers=other_user.headers)
    assert data.status_code == 200
    assert data.content == b"a,b\n1,2\n"
    experiment = await client.get(
        f"/api/v1/experiments/{experiment_id}", headers=other_user.headers
    )
    assert experiment.status_code == 200
    for stored in kept_keys:
        assert await state_of(app).store.stat(stored) is not None


async def test_erasure_keeps_prediction_rows_without_the_person(
    client: httpx.AsyncClient,
    app: FastAPI,
    admin: Account,
    other_user: Account,
    iris_skops: Path,
) -> None:
    # The erased account is an admin (another admin remains), so that it can also call a model
    # it does not own: its calls on others' models are in the log too.
    victim = await factories.make_account(client, admin_of=app)
    mine = await factories.make_version(client, victim, iris_skops, name="iris")
    theirs = await factories.make_version(client, other_user, iris_skops, name="iris")
    key = await factories.make_api_key(client, victim, scopes=["read", "predict"])
    own_call = await predict(client, {"X-API-Key": key}, "iris")
    foreign_call = await predict(client, victim.headers, theirs["model_id"])
    admin_call = await predict(client, admin.headers, mine["model_id"])
    before = await logged(app)
    async with state_of(app).sessions() as db:
        total = select(func.sum(prediction_rollups.c.requests))
        rollups_before = await db.scalar(total)

    assert (await erase(client, admin, victim.id)).status_code == 204

    after = await logged(app)
    assert after.keys() == before.keys()  # no row was lost
    own = after[uuid.UUID(own_call["prediction_id"])]
    assert (own.user_id, own.api_key_id, own.owner_id) == (None, None, None)
    assert (own.inputs, own.outputs) == (None, None)
    assert (own.status, own.n_rows, own.version) == ("success", 1, 1)
    assert own.model_id == uuid.UUID(mine["model_id"])
    foreign = after[uuid.UUID(foreign_call["prediction_id"])]
    assert (foreign.user_id, foreign.api_key_id, foreign.inputs) == (None, None, None)
    assert foreign.owner_id == uuid.UUID(other_user.id)
    on_theirs = after[uuid.UUID(admin_call["prediction_id"])]
    assert on_theirs.owner_id is None
    assert on_theirs.user_id == uuid.UUID(admin.id)
    assert on_theirs.inputs == before[on_theirs.id].inputs
    assert (await owned_rows(app, victim.id))["predictions"] == 0
    assert (await owned_rows(app, victim.id))["rollups"] == 0
    async with state_of(app).sessions() as db:
        assert await db.scalar(total) == rollups_before
    # The owner's analytics still count the call the erased account made on their model.
    stats = await client.get("/api/v1/analytics/models", headers=other_user.headers)
    assert stats.status_code == 200
    assert [row["total_predictions"] for row in stats.json()] == [1]
    calls = await client.get("/api/v1/predictions", headers=other_user.headers)
    assert [item["id"] for item in calls.json()["items"]] == [foreign_call["prediction_id"]]
    assert calls.json()["items"][0]["user_id"] is None
    # The admin still sees the call it made, on a model that is gone.
    mine_now = await client.get(
        f"/api/v1/predictions/{admin_call['prediction_id']}", headers=admin.headers
    )
    assert mine_now.status_code == 200
    assert mine_now.json()["model_name"] is None


async def test_erasure_clears_the_error_texts_of_the_persons_failed_calls(
    client: httpx.AsyncClient,
    app: FastAPI,
    admin: Account,
    other_user: Account,
    iris_skops: Path,
) -> None:
    victim = await factories.make_account(client, admin_of=app)
    theirs = await factories.make_version(client, other_user, iris_skops, name="iris")
    # An error quotes what the caller sent: here an email address as a record key.
    refused = await client.post(
        f"/api/v1/predict/{theirs['model_id']}",
        json={"inputs": [{"alice@example.com": 1.0}]},
        headers=victim.headers,
    )
    assert refused.status_code == 422, refused.text
    own_refused = await client.post(
        f"/api/v1/predict/{theirs['model_id']}",
        json={"inputs": [{"bob@example.com": 1.0}]},
        headers=other_user.headers,
    )
    assert own_refused.status_code == 422, own_refused.text
    before = await logged(app)
    [failed] = [row for row in before.values() if row.user_id == uuid.UUID(victim.id)]
    assert "alice@example.com" in (failed.error or "")

    assert (await erase(client, admin, victim.id)).status_code == 204

    after = await logged(app)
    assert after[failed.id].error is None
    assert (after[failed.id].status, after[failed.id].user_id) == ("error", None)
    # Another caller's failure on the same model keeps its text.
    [kept] = [row for row in after.values() if row.user_id == uuid.UUID(other_user.id)]
    assert "bob@example.com" in (kept.error or "")


async def test_erasure_is_recorded_without_personal_data(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, user: Account, iris_skops: Path
) -> None:
    await factories.make_version(client, user, iris_skops, name="iris")
    await upload_file(client, user, "data.csv")
    actions = record_actions(app)

    assert (await erase(client, admin, user.id)).status_code == 204

    [action] = [a for a in actions if a.name == "user.deleted"]
    assert action.target_type == "user"
    assert action.target_id == user.id
    assert action.owner_id is None
    assert action.outcome == "success"
    assert action.details["models"] == 1
    assert action.details["versions"] == 1
    assert action.details["files"] == 1
    assert action.details["objects_left"] == 0
    assert user.email not in repr(action)


async def test_erasure_announces_the_credentials_and_models(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, user: Account, iris_skops: Path
) -> None:
    version = await factories.make_version(client, user, iris_skops, name="iris")
    events: list[Any] = []
    state_of(app).events.subscribe(events.append)

    assert (await erase(client, admin, user.id)).status_code == 204

    assert (events[0].kind, events[0].user_id) == ("credentials", uuid.UUID(user.id))
    assert [(e.kind, e.model_id) for e in events[1:]] == [
        ("registry", uuid.UUID(version["model_id"]))
    ]


async def test_erasing_an_unknown_user_is_not_found(
    client: httpx.AsyncClient, admin: Account
) -> None:
    assert_problem(await erase(client, admin, str(uuid.uuid4())), 404)


async def test_erasing_a_user_with_a_non_uuid_id_is_unprocessable(
    client: httpx.AsyncClient, admin: Account
) -> None:
    body = assert_problem(await erase(client, admin, "not-a-uuid"), 422)
    assert ["path", "user_id"] in [e["loc"] for e in body["errors"]]


async def test_admin_cannot_erase_themself_through_the_admin_route(
    client: httpx.AsyncClient, app: FastAPI, admin: Account
) -> None:
    await factories.make_account(client, admin_of=app)  # not the last admin: still refused

    response = await erase(client, admin, admin.id)

    assert_problem(response, 409)
    assert (await client.get(ME, headers=admin.headers)).status_code == 200


async def test_non_admin_cannot_erase_a_user(
    client: httpx.AsyncClient, app: FastAPI, user: Account, other_user: Account
) -> None:
    response = await erase(client, user, other_user.id)

    assert_problem(response, 403)
    assert (await owned_rows(app, other_user.id))["users"] == 1


async def test_admin_key_with_the_admin_scope_can_erase_a_user(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, user: Account
) -> None:
    key = await factories.make_api_key(client, admin, scopes=["admin"])

    response = await client.delete(f"{USERS}/{user.id}", headers={"X-API-Key": key})

    assert response.status_code == 204, response.text
    assert (await owned_rows(app, user.id))["users"] == 0


async def test_admin_key_without_the_admin_scope_cannot_erase_a_user(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, user: Account
) -> None:
    key = await factories.make_api_key(client, admin, scopes=["read", "predict", "write"])

    response = await client.delete(f"{USERS}/{user.id}", headers={"X-API-Key": key})

    body = assert_problem(response, 403)
    assert body["type"].endswith("missing-scope")
    assert (await owned_rows(app, user.id))["users"] == 1


async def test_non_admin_key_cannot_erase_a_user(
    client: httpx.AsyncClient, app: FastAPI, user: Account, other_user: Account
) -> None:
    key = await factories.make_api_key(client, user, scopes=["read", "predict", "write"])

    response = await client.delete(f"{USERS}/{other_user.id}", headers={"X-API-Key": key})

    assert_problem(response, 403)
    assert (await owned_rows(app, other_user.id))["users"] == 1


# --- DELETE /auth/me --------------------------------------------------------------------------


async def test_user_erases_their_own_account_with_a_token(
    client: httpx.AsyncClient, app: FastAPI, user: Account, iris_skops: Path
) -> None:
    version = await factories.make_version(client, user, iris_skops, name="iris")
    await upload_file(client, user, "data.csv")
    keys = await storage_keys(app, version["model_id"])

    response = await client.delete(ME, headers=user.headers)

    assert response.status_code == 204, response.text
    assert_unauthorized(await client.get(ME, headers=user.headers))
    assert set((await owned_rows(app, user.id)).values()) == {0}
    store = state_of(app).store
    assert await store.stat(keys[0]) is None
    assert [info async for info in store.list(f"files/{user.id}/")] == []


async def test_own_account_cannot_be_erased_with_an_api_key(
    client: httpx.AsyncClient, app: FastAPI, user: Account, iris_skops: Path
) -> None:
    await factories.make_version(client, user, iris_skops, name="iris")
    key = await factories.make_api_key(client, user, scopes=["read", "predict", "write"])

    response = await client.delete(ME, headers={"X-API-Key": key})

    assert_problem(response, 403)
    assert (await client.get(ME, headers={"X-API-Key": key})).status_code == 200
    rows = await owned_rows(app, user.id)
    assert (rows["users"], rows["models"]) == (1, 1)


async def test_last_active_admin_cannot_erase_their_own_account(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, user: Account
) -> None:
    response = await client.delete(ME, headers=admin.headers)

    assert_problem(response, 409)
    assert (await client.get(ME, headers=admin.headers)).status_code == 200


async def test_admin_erases_their_own_account_while_another_admin_remains(
    client: httpx.AsyncClient, app: FastAPI, admin: Account
) -> None:
    second = await factories.make_account(client, admin_of=app)

    response = await client.delete(ME, headers=admin.headers)

    assert response.status_code == 204, response.text
    assert (await owned_rows(app, admin.id))["users"] == 0
    # The remaining admin is now the last one.
    assert_problem(await client.delete(ME, headers=second.headers), 409)


async def test_erasing_a_deactivated_admin_does_not_count_as_the_last_admin(
    client: httpx.AsyncClient, app: FastAPI, admin: Account
) -> None:
    other = await factories.make_account(client, admin_of=app)
    deactivate = await client.patch(
        f"{USERS}/{other.id}", json={"is_active": False}, headers=admin.headers
    )
    assert deactivate.status_code == 200

    assert (await erase(client, admin, other.id)).status_code == 204
    assert (await owned_rows(app, other.id))["users"] == 0


@pytest.mark.parametrize("path", [ME, f"{USERS}/{uuid.UUID(int=0)}"])
async def test_erasure_needs_credentials(client: httpx.AsyncClient, path: str) -> None:
    assert_unauthorized(await client.delete(path))


async def queued(conn: AsyncConnection, waiting: TextClause) -> bool:
    """Tell whether a session waits on a lock; each time in a new transaction (PostgreSQL keeps
    one view of pg_stat_activity for a whole transaction)."""
    try:
        return bool((await conn.execute(waiting)).scalar())
    finally:
        await conn.rollback()


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_erasure_waits_for_a_version_being_added_and_erases_it_too(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, user: Account, iris_skops: Path
) -> None:
    # SQLite has one writer at a time: only PostgreSQL lets an upload's transaction run beside.
    state = state_of(app)
    await state.store.put_file("models/in-flight", iris_skops)
    model_id, now = uuid.uuid4(), utcnow()
    async with state.engine.connect() as upload:
        await upload.begin()
        await upload.execute(
            insert(RegisteredModel).values(
                id=model_id,
                owner_id=uuid.UUID(user.id),
                name="late",
                tags=[],
                status="active",
                version_count=1,
                created_at=now,
                updated_at=now,
            )
        )
        await upload.execute(
            insert(ModelVersion).values(
                id=uuid.uuid4(),
                model_id=model_id,
                version=1,
                stage="development",
                framework="sklearn",
                format="skops",
                storage_key="models/in-flight",
                file_size=1,
                sha256="0" * 64,
                metrics={},
                hyperparameters={},
                tags=[],
                metadata={},
                created_at=now,
                updated_at=now,
            )
        )
        erasing = asyncio.create_task(erase(client, admin, user.id))
        async with state.engine.connect() as watch:
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            async with asyncio.timeout(10):
                # The lock lives in another session of the server: nothing here can be awaited.
                while not await queued(watch, waiting):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)  # polling interval, not an assertion
        await upload.commit()

    assert (await erasing).status_code == 204
    assert await state.store.stat("models/in-flight") is None
    assert (await owned_rows(app, user.id))["models"] == 0
