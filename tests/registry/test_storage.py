"""The registry on both artifact stores: uploads, downloads, links, clean failures, gc."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from modelyard.cli import _gc
from modelyard.config import Settings
from modelyard.db.tables import ModelVersion
from modelyard.state import AppState
from tests.serving import hostile
from tests.support.factories import Account, make_version, upload_model
from tests.support.settings import make_settings

API = "/api/v1/models"


@pytest.fixture
def settings(tmp_path: Path, database_url: str, storage_settings: dict[str, object]) -> Settings:
    # One user uploads four versions at once below: let all four be probed together.
    return make_settings(
        tmp_path, database_url, probe_max_concurrent_per_user=4, **storage_settings
    )


async def stored_keys(app: FastAPI) -> list[str]:
    state: AppState = app.state.modelyard
    return sorted([info.key async for info in state.store.list("models/")])


async def version_keys(app: FastAPI) -> list[str]:
    state: AppState = app.state.modelyard
    async with state.sessions() as db:
        return sorted(await db.scalars(select(ModelVersion.storage_key)))


async def test_upload_download_and_link_round_trip(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path, iris_bytes: bytes
) -> None:
    version = await make_version(client, user, iris_skops)
    assert await stored_keys(app) == await version_keys(app)
    download = await client.get(f"{API}/iris/versions/1/download", headers=user.headers)
    assert download.content == iris_bytes
    assert download.headers["etag"] == f'"{version["sha256"]}"'
    link = (await client.get(f"{API}/iris/versions/1/download-url", headers=user.headers)).json()[
        "url"
    ]
    if link.startswith("http://testserver"):
        fetched = await client.get(link)
    else:  # an S3 presigned URL: fetched from the store itself, without our credentials
        async with httpx.AsyncClient() as outside:
            fetched = await outside.get(link)
    assert fetched.status_code == 200
    assert fetched.content == iris_bytes
    assert "iris-v1.skops" in fetched.headers["content-disposition"]


async def test_refused_upload_leaves_no_object(
    app: FastAPI, client: httpx.AsyncClient, user: Account, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    response = await upload_model(client, user, hostile.joblib_os_system(tmp_path, marker))
    assert response.status_code == 422
    assert not marker.exists()
    assert await stored_keys(app) == []


async def test_concurrent_uploads_store_one_object_per_version(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    responses = await asyncio.gather(
        *(upload_model(client, user, iris_skops, name="race") for _ in range(4))
    )
    assert sorted(r.json()["version"] for r in responses) == [1, 2, 3, 4]
    assert await stored_keys(app) == await version_keys(app)


async def test_gc_removes_only_unreferenced_objects(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    settings: Settings,
    iris_skops: Path,
) -> None:
    await make_version(client, user, iris_skops)
    await client.delete(f"{API}/iris/versions/1", headers=user.headers)  # archived: still kept
    state: AppState = app.state.modelyard
    await state.store.put_file("models/orphan", iris_skops)
    referenced = await version_keys(app)

    assert await _gc(settings, timedelta(hours=1)) == 0  # too young to be collected
    assert await _gc(settings, timedelta(0)) == 1
    assert await stored_keys(app) == referenced
    download = await client.get(f"{API}/iris/versions/1/download", headers=user.headers)
    assert download.status_code == 200
