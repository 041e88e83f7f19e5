"""Download links of the app are bound to the object's sha256, its version and its owner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.config import Settings
from tests.support.factories import Account, make_version
from tests.support.settings import make_settings

FILES = "/api/v1/files"
MODELS = "/api/v1/models"


@pytest.fixture
def settings(tmp_path: Path, database_url: str, storage_settings: dict[str, object]) -> Settings:
    # On S3 too, links through the app: the bucket's own presigned URLs cannot be bound.
    return make_settings(tmp_path, database_url, download_links_via_app=True, **storage_settings)


async def put_file(client: httpx.AsyncClient, user: Account, path: str, data: bytes) -> None:
    response = await client.post(
        f"{FILES}/upload",
        files={"file": ("f.bin", data, "application/octet-stream")},
        data={"path": path},
        headers=user.headers,
    )
    assert response.status_code == 201, response.text


async def file_link(client: httpx.AsyncClient, user: Account, path: str) -> str:
    response = await client.get(f"{FILES}/presigned-url/{path}", headers=user.headers)
    assert response.status_code == 200, response.text
    url: str = response.json()["url"]
    assert url.startswith("http://testserver/api/v1/artifacts/signed/")
    return url


async def version_link(client: httpx.AsyncClient, user: Account, model: str) -> str:
    response = await client.get(f"{MODELS}/{model}/versions/1/download-url", headers=user.headers)
    assert response.status_code == 200, response.text
    url: str = response.json()["url"]
    assert url.startswith("http://testserver/api/v1/artifacts/signed/")
    return url


def assert_gone(response: httpx.Response) -> None:
    assert response.status_code == 410, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"].endswith("/download-link-gone")
    assert "files/" not in response.text


async def deactivate(client: httpx.AsyncClient, admin: Account, user: Account) -> None:
    response = await client.patch(
        f"/api/v1/users/{user.id}", json={"is_active": False}, headers=admin.headers
    )
    assert response.status_code == 200, response.text


async def test_file_link_downloads_the_file(client: httpx.AsyncClient, user: Account) -> None:
    await put_file(client, user, "r/report.csv", b"a,b\n")

    response = await client.get(await file_link(client, user, "r/report.csv"))

    assert response.status_code == 200
    assert response.content == b"a,b\n"


async def test_file_link_does_not_serve_a_new_file_at_the_same_path(
    client: httpx.AsyncClient, user: Account
) -> None:
    await put_file(client, user, "r/report.csv", b"the old report")
    link = await file_link(client, user, "r/report.csv")
    deleted = await client.delete(f"{FILES}/r/report.csv", headers=user.headers)
    after_delete = await client.get(link)
    await put_file(client, user, "r/report.csv", b"the new report")

    response = await client.get(link)

    assert deleted.status_code == 204
    assert_gone(after_delete)
    assert_gone(response)
    assert b"the new report" not in response.content


async def test_file_link_does_not_serve_an_overwritten_file(
    client: httpx.AsyncClient, user: Account
) -> None:
    await put_file(client, user, "r/report.csv", b"the old report")
    link = await file_link(client, user, "r/report.csv")
    await put_file(client, user, "r/report.csv", b"the new report")

    assert_gone(await client.get(link))


async def test_file_link_survives_the_same_bytes_put_again(
    client: httpx.AsyncClient, user: Account
) -> None:
    await put_file(client, user, "r/report.csv", b"the report")
    link = await file_link(client, user, "r/report.csv")
    await put_file(client, user, "r/report.csv", b"the report")

    response = await client.get(link)

    assert response.status_code == 200
    assert response.content == b"the report"


async def test_file_link_stops_when_the_owner_is_deactivated(
    client: httpx.AsyncClient, user: Account, admin: Account
) -> None:
    await put_file(client, user, "r/report.csv", b"a,b\n")
    link = await file_link(client, user, "r/report.csv")
    await deactivate(client, admin, user)

    assert_gone(await client.get(link))


async def test_version_link_downloads_the_artifact(
    client: httpx.AsyncClient, user: Account, iris_skops: Path, iris_bytes: bytes
) -> None:
    version = await make_version(client, user, iris_skops)

    response = await client.get(await version_link(client, user, "iris"))

    assert response.status_code == 200
    assert response.content == iris_bytes
    assert response.headers["etag"] == f'"{version["sha256"]}"'


@pytest.mark.parametrize("archive", ["version", "model"])
async def test_version_link_stops_when_archived(
    client: httpx.AsyncClient, user: Account, iris_skops: Path, archive: str
) -> None:
    await make_version(client, user, iris_skops)
    link = await version_link(client, user, "iris")
    target = f"{MODELS}/iris/versions/1" if archive == "version" else f"{MODELS}/iris"
    assert (await client.delete(target, headers=user.headers)).status_code == 204

    assert_gone(await client.get(link))


async def test_version_link_stops_when_the_owner_is_deactivated(
    client: httpx.AsyncClient, user: Account, admin: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    link = await version_link(client, user, "iris")
    await deactivate(client, admin, user)

    assert_gone(await client.get(link))
