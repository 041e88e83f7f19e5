"""The streaming multipart receiver: limits, malformed bodies, temp files always removed."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from modelyard.artifacts.uploads import receive_upload
from modelyard.errors import install_error_handlers
from tests.artifacts.multipart import BOUNDARY, CONTENT_TYPE, body, in_chunks, part

MAX_BYTES = 1000


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    return tmp_path / "uploads-tmp"


@pytest.fixture
async def upload_client(tmp_dir: Path) -> Any:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/up")
    async def up(request: Request) -> dict[str, Any]:
        async with receive_upload(
            request, tmp_dir=tmp_dir, max_bytes=MAX_BYTES, allowed_fields=frozenset({"note"})
        ) as upload:
            return {
                "fields": upload.fields,
                "size": upload.file.size,
                "sha256": upload.file.sha256,
                "filename": upload.file.filename,
                "content": upload.file.path.read_bytes().decode(),
            }

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def leftovers(tmp_dir: Path) -> list[str]:
    return sorted(p.name for p in tmp_dir.iterdir()) if tmp_dir.exists() else []


async def post(client: httpx.AsyncClient, content: Any, **headers: str) -> httpx.Response:
    return await client.post(
        "/up", content=content, headers={"Content-Type": CONTENT_TYPE, **headers}
    )


async def test_file_and_fields_are_received(
    upload_client: httpx.AsyncClient, tmp_dir: Path
) -> None:
    data = b"hello world"

    response = await post(
        upload_client, body(part("note", "été".encode()), part("file", data, filename="h.txt"))
    )

    assert response.status_code == 200, response.text
    assert response.json() == {
        "fields": {"note": "été"},
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "filename": "h.txt",
        "content": "hello world",
    }
    assert leftovers(tmp_dir) == []


async def test_streamed_file_past_the_limit_is_413_and_leaves_no_temp_file(
    upload_client: httpx.AsyncClient, tmp_dir: Path
) -> None:
    data = body(part("file", b"x" * (MAX_BYTES * 5), filename="big.bin"))

    response = await post(upload_client, in_chunks(data, 300))

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert "exceeds" in response.json()["detail"]
    assert leftovers(tmp_dir) == []


async def test_missing_file_is_422(upload_client: httpx.AsyncClient) -> None:
    response = await post(upload_client, body(part("note", b"hi")))

    assert response.status_code == 422
    assert response.json()["detail"] == "multipart field 'file' is required"


async def test_unknown_field_is_422_naming_it(
    upload_client: httpx.AsyncClient, tmp_dir: Path
) -> None:
    response = await post(
        upload_client, body(part("file", b"x", filename="a"), part("owner_id", b"someone"))
    )

    assert response.status_code == 422
    assert "'owner_id'" in response.json()["detail"]
    assert leftovers(tmp_dir) == []


@pytest.mark.parametrize("name", ["file", "note"])
async def test_repeated_part_is_422(
    upload_client: httpx.AsyncClient, tmp_dir: Path, name: str
) -> None:
    response = await post(
        upload_client,
        body(part(name, b"1", filename="a"), part(name, b"2", filename="b"))
        if name == "file"
        else body(part("file", b"x", filename="a"), part(name, b"1"), part(name, b"2")),
    )

    assert response.status_code == 422
    assert "more than once" in response.json()["detail"]
    assert leftovers(tmp_dir) == []


async def test_oversized_text_field_is_413(upload_client: httpx.AsyncClient) -> None:
    response = await post(upload_client, body(part("note", b"n" * (1024 * 1024 + 1))))

    assert response.status_code == 413


@pytest.mark.parametrize(
    "content",
    [
        b"not multipart at all",
        part("file", b"truncated", filename="a"),  # no closing boundary
        f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
    ],
    ids=["garbage", "truncated", "no-disposition"],
)
async def test_malformed_body_is_400(
    upload_client: httpx.AsyncClient, tmp_dir: Path, content: bytes
) -> None:
    response = await post(upload_client, content)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert leftovers(tmp_dir) == []


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "application/x-www-form-urlencoded", ""]
)
async def test_other_content_types_are_415(
    upload_client: httpx.AsyncClient, content_type: str
) -> None:
    response = await upload_client.post(
        "/up", content=b"{}", headers={"Content-Type": content_type}
    )

    assert response.status_code == 415


async def test_multipart_without_boundary_is_400(upload_client: httpx.AsyncClient) -> None:
    response = await upload_client.post(
        "/up", content=b"x", headers={"Content-Type": "multipart/form-data"}
    )

    assert response.status_code == 400
