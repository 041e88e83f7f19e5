"""`/api/v1/files` on both storage backends and both databases: round trips, ownership, paths."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelyard.artifacts.signing import LinkTarget, UrlSigner
from modelyard.config import Settings
from modelyard.state import AppState
from tests.artifacts.multipart import CONTENT_TYPE, body, in_chunks, part
from tests.support.factories import Account
from tests.support.settings import TEST_SECRET_KEY

CANARY = b"canary: must stay unread and unchanged"


async def upload(
    client: httpx.AsyncClient,
    account: Account,
    data: bytes,
    *,
    filename: str = "data.csv",
    path: str | None = None,
) -> httpx.Response:
    files: dict[str, Any] = {"file": (filename, data, "text/csv")}
    return await client.post(
        "/api/v1/files/upload",
        files=files,
        data={"path": path} if path is not None else None,
        headers=account.headers,
    )


async def plain_get(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """GET a download URL with no credentials: S3 URLs go to the S3 server, local ones to the app."""
    if url.startswith("http://testserver"):
        return await client.get(url)
    async with httpx.AsyncClient() as plain:
        return await plain.get(url)


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


async def test_upload_download_round_trip(client: httpx.AsyncClient, user: Account) -> None:
    data = b"a,b\n1,2\n"

    stored = await upload(client, user, data, path="datasets/iris.csv")
    got = await client.get("/api/v1/files/download/datasets/iris.csv", headers=user.headers)

    assert stored.status_code == 201, stored.text
    assert stored.json() == {
        "path": "datasets/iris.csv",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-length"] == str(len(data))
    assert got.headers["content-disposition"] == (
        "attachment; filename=\"iris.csv\"; filename*=UTF-8''iris.csv"
    )


async def test_upload_without_path_uses_the_file_name(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await upload(client, user, b"x", filename="report.pdf")

    assert response.status_code == 201
    assert response.json()["path"] == "report.pdf"


async def test_upload_overwrites_an_existing_path(client: httpx.AsyncClient, user: Account) -> None:
    await upload(client, user, b"old", path="a.txt")

    response = await upload(client, user, b"newer", path="a.txt")
    got = await client.get("/api/v1/files/download/a.txt", headers=user.headers)
    listed = await client.get("/api/v1/files", headers=user.headers)

    assert response.status_code == 201
    assert got.content == b"newer"
    assert [item["path"] for item in listed.json()["items"]] == ["a.txt"]


async def test_list_pages_by_path_and_filters_by_prefix(
    client: httpx.AsyncClient, user: Account
) -> None:
    for path in ("b.txt", "reports/q2.csv", "a.txt", "reports/q1.csv"):
        assert (await upload(client, user, b"12", path=path)).status_code == 201

    first = await client.get("/api/v1/files?limit=3", headers=user.headers)
    second = await client.get("/api/v1/files?limit=3&offset=3", headers=user.headers)
    reports = await client.get("/api/v1/files?prefix=reports/", headers=user.headers)

    assert first.status_code == 200
    body_ = first.json()
    assert [item["path"] for item in body_["items"]] == ["a.txt", "b.txt", "reports/q1.csv"]
    assert (body_["total"], body_["limit"], body_["offset"]) == (4, 3, 0)
    assert body_["items"][0]["size"] == 2
    assert body_["items"][0]["modified_at"].endswith(("Z", "+00:00"))
    assert [item["path"] for item in second.json()["items"]] == ["reports/q2.csv"]
    assert [item["path"] for item in reports.json()["items"]] == [
        "reports/q1.csv",
        "reports/q2.csv",
    ]


async def test_delete_removes_the_file(client: httpx.AsyncClient, user: Account) -> None:
    await upload(client, user, b"x", path="tmp/x.bin")

    deleted = await client.delete("/api/v1/files/tmp/x.bin", headers=user.headers)
    again = await client.delete("/api/v1/files/tmp/x.bin", headers=user.headers)
    got = await client.get("/api/v1/files/download/tmp/x.bin", headers=user.headers)

    assert deleted.status_code == 204
    assert again.status_code == 404
    assert got.status_code == 404
    assert (await client.get("/api/v1/files", headers=user.headers)).json()["total"] == 0


async def test_presigned_url_downloads_without_credentials(
    client: httpx.AsyncClient, user: Account
) -> None:
    await upload(client, user, b"shared bytes", path="out/model.onnx")

    response = await client.get(
        "/api/v1/files/presigned-url/out/model.onnx?expires_in=120", headers=user.headers
    )
    url = response.json()["url"]
    got = await plain_get(client, url)

    assert response.status_code == 200
    assert url.startswith("http://")
    assert 100 <= time_left(response.json()["expires_at"]) <= 121
    assert got.status_code == 200
    assert got.content == b"shared bytes"
    assert 'filename="model.onnx"' in got.headers["content-disposition"]


def time_left(expires_at: str) -> float:
    from datetime import UTC, datetime

    return (datetime.fromisoformat(expires_at) - datetime.now(UTC)).total_seconds()


async def test_local_download_link_stops_working_when_expired(
    client: httpx.AsyncClient, user: Account, storage: str
) -> None:
    if storage != "local":
        pytest.skip("S3 enforces its own expiry; moto does not check presigned signatures")
    await upload(client, user, b"x", path="x.bin")
    key = f"files/{user.id}/x.bin"
    target = LinkTarget(key, uuid.UUID(user.id), hashlib.sha256(b"x").hexdigest())
    expired = UrlSigner(TEST_SECRET_KEY).url(target, int(time.time()) - 5, "x.bin")

    response = await client.get(expired)

    assert response.status_code == 403
    assert response.json()["detail"] == "download link expired"


@pytest.mark.parametrize("expires_in", [0, -1, 7 * 24 * 3600 + 1])
async def test_presigned_url_lifetime_is_bounded(
    client: httpx.AsyncClient, user: Account, expires_in: int
) -> None:
    await upload(client, user, b"x", path="x.bin")

    response = await client.get(
        f"/api/v1/files/presigned-url/x.bin?expires_in={expires_in}", headers=user.headers
    )

    assert response.status_code == 422


async def test_missing_file_is_404_everywhere(client: httpx.AsyncClient, user: Account) -> None:
    for method, url in (
        ("GET", "/api/v1/files/download/nope.txt"),
        ("GET", "/api/v1/files/presigned-url/nope.txt"),
        ("DELETE", "/api/v1/files/nope.txt"),
    ):
        response = await client.request(method, url, headers=user.headers)
        assert response.status_code == 404, (method, url)
        assert response.json()["detail"] == "file 'nope.txt' not found"


async def test_other_users_cannot_reach_a_users_files(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await upload(client, user, b"private", path="secret.txt")

    listed = await client.get("/api/v1/files", headers=other_user.headers)
    responses = [
        await client.get("/api/v1/files/download/secret.txt", headers=other_user.headers),
        await client.get("/api/v1/files/presigned-url/secret.txt", headers=other_user.headers),
        await client.delete("/api/v1/files/secret.txt", headers=other_user.headers),
        # Their own id in the path is just a folder name inside the caller's area.
        await client.get(
            f"/api/v1/files/download/files/{user.id}/secret.txt", headers=other_user.headers
        ),
    ]

    assert listed.json()["total"] == 0
    assert [r.status_code for r in responses] == [404, 404, 404, 404]
    got = await client.get("/api/v1/files/download/secret.txt", headers=user.headers)
    assert got.content == b"private"


async def test_same_path_for_two_users_is_two_files(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await upload(client, user, b"mine", path="notes.txt")
    await upload(client, other_user, b"theirs", path="notes.txt")

    mine = await client.get("/api/v1/files/download/notes.txt", headers=user.headers)

    assert mine.content == b"mine"


@pytest.mark.parametrize(
    "raw",
    [
        "..%2F..%2Fsecret_key",
        "%2e%2e%2f%2e%2e%2fsecret_key",
        "%2e%2e/%2e%2e/secret_key",
        "..%2f..%2f..%2f..%2fetc%2fpasswd",
        "%2Fetc%2Fpasswd",
        "%2F%2Fetc%2Fpasswd",
        "a%00b",
        "..%5C..%5Csecret_key",
        "a%5Cb",
        "C:%5Cx",
        "a%2F%2Fb",
        "a/.%2Fb",
        "%0D%0Ax",  # the router's `.*` stops at a newline: 404 "no such route", also fine
    ],
)
async def test_percent_encoded_traversal_is_refused(
    client: httpx.AsyncClient, user: Account, settings: Settings, raw: str
) -> None:
    canary = settings.data_dir / "canary.txt"
    canary.write_bytes(CANARY)
    (settings.data_dir / "tmp").mkdir(exist_ok=True)  # the upload folder may appear, empty
    before = tree(settings.data_dir)

    responses = [
        await client.get(f"/api/v1/files/download/{raw}", headers=user.headers),
        await client.get(f"/api/v1/files/presigned-url/{raw}", headers=user.headers),
        await client.delete(f"/api/v1/files/{raw}", headers=user.headers),
    ]

    expected = 404 if "%0A" in raw else 400
    assert [r.status_code for r in responses] == [expected] * 3, [r.text for r in responses]
    assert all(r.headers["content-type"] == "application/problem+json" for r in responses)
    assert CANARY not in b"".join(r.content for r in responses)
    assert canary.read_bytes() == CANARY
    assert tree(settings.data_dir) == before


@pytest.mark.parametrize(
    "path",
    ["../secret_key", "../../canary.txt", "/etc/passwd", "a/../../b", "a\\..\\b", "a\x00b",
     "C:\\x", "a//b", "./a", ""],
)  # fmt: skip
async def test_hostile_upload_path_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, user: Account, settings: Settings, path: str
) -> None:
    canary = settings.data_dir / "canary.txt"
    canary.write_bytes(CANARY)
    (settings.data_dir / "tmp").mkdir(exist_ok=True)  # the upload folder may appear, empty
    before = tree(settings.data_dir)

    response = await upload(client, user, b"payload", path=path)

    assert response.status_code == 400, response.text
    assert canary.read_bytes() == CANARY
    assert tree(settings.data_dir) == before
    assert (await client.get("/api/v1/files", headers=user.headers)).json()["total"] == 0


async def test_hostile_file_name_without_path_is_reduced_to_its_last_segment(
    client: httpx.AsyncClient, user: Account, settings: Settings
) -> None:
    response = await upload(client, user, b"x", filename="../../canary.txt")

    assert response.status_code == 201
    assert response.json()["path"] == "canary.txt"
    assert not (settings.data_dir / "canary.txt").exists()


async def test_double_encoded_dots_are_a_literal_file_name(
    client: httpx.AsyncClient, user: Account
) -> None:
    stored = await upload(client, user, b"literal", path="%2e%2e%2fx")

    got = await client.get("/api/v1/files/download/%252e%252e%252fx", headers=user.headers)
    listed = await client.get("/api/v1/files", headers=user.headers)

    assert stored.status_code == 201
    assert got.status_code == 200
    assert got.content == b"literal"
    assert [item["path"] for item in listed.json()["items"]] == ["%2e%2e%2fx"]


@pytest.mark.parametrize("prefix", ["../", "%2F", "..%2F", "a%5C"])
async def test_hostile_list_prefix_is_refused(
    client: httpx.AsyncClient, user: Account, prefix: str
) -> None:
    response = await client.get(f"/api/v1/files?prefix={prefix}", headers=user.headers)

    assert response.status_code == 400


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("POST", "/api/v1/files/upload"),
        ("GET", "/api/v1/files"),
        ("GET", "/api/v1/files/download/a.txt"),
        ("GET", "/api/v1/files/presigned-url/a.txt"),
        ("DELETE", "/api/v1/files/a.txt"),
    ],
)
async def test_every_route_needs_credentials(
    client: httpx.AsyncClient, method: str, url: str
) -> None:
    response = await client.request(method, url)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_upload_past_the_body_limit_is_413_with_no_temp_file(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    state: AppState = app.state.modelyard
    limit = state.settings.max_upload_bytes
    data = body(part("file", b"x" * 4096, filename="big.bin"))
    state.settings.max_upload_bytes = 1024  # the receiver's own limit
    try:
        response = await client.post(
            "/api/v1/files/upload",
            content=in_chunks(data, 500),
            headers={"Content-Type": CONTENT_TYPE, **user.headers},
        )
    finally:
        state.settings.max_upload_bytes = limit

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert list((state.settings.data_dir / "tmp").iterdir()) == []
    assert (await client.get("/api/v1/files", headers=user.headers)).json()["total"] == 0


async def test_download_name_carries_no_bidi_override_or_line_separator(
    client: httpx.AsyncClient, user: Account
) -> None:
    path = "invoice\u202efdp\u2028.exe"
    assert (await upload(client, user, b"MZ", path=path)).status_code == 201

    response = await client.get(f"/api/v1/files/download/{path}", headers=user.headers)

    disposition = response.headers["content-disposition"]
    assert response.status_code == 200
    assert (
        disposition
        == "attachment; filename=\"invoice_fdp_.exe\"; filename*=UTF-8''invoice_fdp_.exe"
    )
