"""Account erasure and the artifact store, on both backends (local folder and S3)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from modelyard.accounts.erasure import erase_user
from modelyard.artifacts import LocalStore
from modelyard.artifacts.store import StorageUnavailable
from modelyard.cli import _gc
from modelyard.config import Settings
from modelyard.state import AppState
from tests.accounts.test_erasure import owned_rows, storage_keys, upload_file
from tests.support import factories
from tests.support.factories import Account
from tests.support.problems import assert_unauthorized
from tests.support.settings import make_settings


@pytest.fixture
def settings(tmp_path: Path, database_url: str, storage_settings: dict[str, object]) -> Settings:
    return make_settings(tmp_path, database_url, **storage_settings)


async def test_erasure_deletes_the_user_artifacts_and_files_from_the_store(
    client: httpx.AsyncClient,
    app: FastAPI,
    admin: Account,
    user: Account,
    other_user: Account,
    iris_skops: Path,
) -> None:
    version = await factories.make_version(client, user, iris_skops, name="iris")
    await factories.make_version(client, user, iris_skops, name="iris")
    await upload_file(client, user, "data.csv")
    await upload_file(client, user, "reports/2026/q4.csv")
    kept = await factories.make_version(client, other_user, iris_skops, name="iris")
    await upload_file(client, other_user, "data.csv")
    state: AppState = app.state.modelyard
    store = state.store
    keys = await storage_keys(app, version["model_id"])
    assert len(keys) == 2
    files = [info.key async for info in store.list(f"files/{user.id}/")]
    assert len(files) == 2
    kept_keys = [
        *await storage_keys(app, kept["model_id"]),
        *[info.key async for info in store.list(f"files/{other_user.id}/")],
    ]

    response = await client.delete(f"/api/v1/users/{user.id}", headers=admin.headers)

    assert response.status_code == 204, response.text
    for key in [*keys, *files]:
        assert await store.stat(key) is None
    assert [info.key async for info in store.list(f"files/{user.id}/")] == []
    for key in kept_keys:
        assert await store.stat(key) is not None


class RefusingStore(LocalStore):
    """The app's folder, as a store that is down for deletes."""

    async def delete(self, key: str) -> None:
        raise StorageUnavailable


@pytest.mark.parametrize("storage", ["local"], indirect=True)
async def test_store_failure_after_the_commit_leaves_the_account_erased_for_gc(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    user: Account,
    other_user: Account,
    iris_skops: Path,
) -> None:
    version = await factories.make_version(client, user, iris_skops, name="iris")
    await upload_file(client, user, "data.csv")
    await factories.make_version(client, other_user, iris_skops, name="iris")
    await upload_file(client, other_user, "data.csv")
    state: AppState = app.state.modelyard
    await state.store.put_file("files/not-an-area/kept.csv", iris_skops)
    keys = await storage_keys(app, version["model_id"])
    stored_before = [info.key async for info in state.store.list("")]
    store = RefusingStore(state.settings.data_dir / "artifacts")

    async with state.sessions() as db:
        erasure = await erase_user(db, uuid.UUID(user.id), store=store, events=state.events)

    assert (erasure.models, erasure.versions, erasure.files) == (1, 1, 1)
    assert erasure.objects_left == 2
    assert set((await owned_rows(app, user.id)).values()) == {0}
    assert_unauthorized(await client.get("/api/v1/auth/me", headers=user.headers))
    assert await state.store.stat(keys[0]) is not None
    # What the store refused, `modelyard gc` collects: what no row and no user references.
    assert await _gc(settings, timedelta(0)) == 2
    left = [
        key for key in stored_before if key != keys[0] and not key.startswith(f"files/{user.id}/")
    ]
    assert [info.key async for info in state.store.list("")] == left
