"""Content-Disposition built for every browser, and signed local download links."""

from __future__ import annotations

import hashlib
import time
import uuid

import httpx
import pytest
from fastapi import FastAPI

from modelyard.artifacts.http import content_disposition
from modelyard.artifacts.signing import LinkTarget, UrlSigner
from modelyard.state import AppState
from tests.artifacts.test_store import chunks_of
from tests.support.factories import Account
from tests.support.settings import TEST_SECRET_KEY

DATA = b"1,2,3"
DATA_SHA256 = hashlib.sha256(DATA).hexdigest()


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("model.onnx", "attachment; filename=\"model.onnx\"; filename*=UTF-8''model.onnx"),
        ("é x.bin", "attachment; filename=\"_ x.bin\"; filename*=UTF-8''%C3%A9%20x.bin"),
        ('a"b\\c', "attachment; filename=\"a_b_c\"; filename*=UTF-8''a%22b%5Cc"),
        ("a\r\nSet-Cookie: x", "attachment; filename=\"a__Set-Cookie: x\"; filename*=UTF-8''a__Set-Cookie%3A%20x"),
        ("", "attachment; filename=\"download\"; filename*=UTF-8''download"),
        ("invoice\u202efdp.exe", "attachment; filename=\"invoice_fdp.exe\"; filename*=UTF-8''invoice_fdp.exe"),
        ("a\u2028b\u2029c.txt", "attachment; filename=\"a_b_c.txt\"; filename*=UTF-8''a_b_c.txt"),
        ("\u2066x\u2069\u200b\u200e.csv", "attachment; filename=\"_x___.csv\"; filename*=UTF-8''_x___.csv"),
        ("r\u00e9sum\u00e9\u0085.pdf", "attachment; filename=\"r_sum__.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9_.pdf"),
    ],
    ids=["ascii", "unicode", "quotes", "crlf", "empty", "rtl-override", "line-separators", "bidi-isolates-zero-width", "c1-control"],
)  # fmt: skip
def test_content_disposition(filename: str, expected: str) -> None:
    assert content_disposition(filename) == expected


async def put(app: FastAPI, key: str, data: bytes) -> None:
    state: AppState = app.state.modelyard

    await state.store.put_stream(key, chunks_of(data), max_bytes=len(data) + 1)


def data_link(owner: str, expires: int, filename: str | None = "d.csv") -> str:
    target = LinkTarget(f"files/{owner}/data.csv", uuid.UUID(owner), DATA_SHA256)
    return UrlSigner(TEST_SECRET_KEY).url(target, expires, filename)


async def test_local_store_leaves_links_to_the_app(app: FastAPI) -> None:
    state: AppState = app.state.modelyard

    assert await state.store.presigned_url("files/u/data.csv", expires_in=60) is None


async def test_signed_url_downloads_without_credentials(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    await put(app, f"files/{user.id}/data.csv", DATA)
    url = data_link(user.id, int(time.time()) + 60)

    response = await client.get(url)

    assert url.startswith(f"/api/v1/artifacts/signed/files/{user.id}/data.csv?")
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-disposition"].startswith('attachment; filename="d.csv"')
    assert response.headers["etag"] == f'"{DATA_SHA256}"'


async def test_expired_signed_url_is_403(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    await put(app, f"files/{user.id}/data.csv", DATA)

    response = await client.get(data_link(user.id, int(time.time()) - 1, None))

    assert response.status_code == 403
    assert response.json()["type"].endswith("/download-link-expired")


@pytest.mark.parametrize(
    "tamper",
    [
        "key",
        "expiry",
        "filename",
        "signature",
        "other-secret",
        "owner",
        "sha256",
        "version",
        "unbound",
    ],
)
async def test_tampered_signed_url_is_403(
    app: FastAPI, client: httpx.AsyncClient, user: Account, other_user: Account, tamper: str
) -> None:
    await put(app, f"files/{user.id}/data.csv", DATA)
    await put(app, f"files/{other_user.id}/data.csv", b"secret")
    expires = int(time.time()) + 60
    url = data_link(user.id, expires)
    url = {
        "key": url.replace(f"files/{user.id}/", f"files/{other_user.id}/"),
        "expiry": url.replace(f"expires={expires}", f"expires={expires + 3600}"),
        "filename": url.replace("filename=d.csv", "filename=evil.html"),
        "signature": url[:-2] + ("AA" if not url.endswith("AA") else "BB"),
        "other-secret": UrlSigner("another-secret").url(
            LinkTarget(f"files/{user.id}/data.csv", uuid.UUID(user.id), DATA_SHA256), expires, None
        ),
        "owner": url.replace(f"owner={user.id}", f"owner={other_user.id}"),
        "sha256": url.replace(DATA_SHA256, hashlib.sha256(b"secret").hexdigest()),
        "version": url.replace("&signature=", f"&version={uuid.uuid4()}&signature="),
        "unbound": url.replace(f"owner={user.id}&", "").replace(f"sha256={DATA_SHA256}&", ""),
    }[tamper]

    response = await client.get(url)

    assert response.status_code == 403
    assert response.json()["type"].endswith("/download-link-invalid")
