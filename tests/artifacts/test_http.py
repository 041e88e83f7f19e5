"""Content-Disposition built for every browser, and signed local download links."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi import FastAPI

from modelyard.artifacts.http import content_disposition
from modelyard.artifacts.signing import UrlSigner
from modelyard.state import AppState
from tests.artifacts.test_store import chunks_of
from tests.conftest import TEST_SECRET_KEY


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


async def test_local_signed_url_downloads_without_credentials(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await put(app, "files/u/data.csv", b"1,2,3")
    state: AppState = app.state.modelyard

    url = await state.store.presigned_url("files/u/data.csv", expires_in=60, filename="d.csv")
    response = await client.get(url)

    assert url.startswith("/api/v1/artifacts/signed/files/u/data.csv?")
    assert response.status_code == 200
    assert response.content == b"1,2,3"
    assert response.headers["content-disposition"].startswith('attachment; filename="d.csv"')


async def test_expired_signed_url_is_403(app: FastAPI, client: httpx.AsyncClient) -> None:
    await put(app, "files/u/data.csv", b"1,2,3")
    url = UrlSigner(TEST_SECRET_KEY).url("files/u/data.csv", int(time.time()) - 1, None)

    response = await client.get(url)

    assert response.status_code == 403
    assert response.json()["type"].endswith("/download-link-expired")


@pytest.mark.parametrize("tamper", ["key", "expiry", "filename", "signature", "other-secret"])
async def test_tampered_signed_url_is_403(
    app: FastAPI, client: httpx.AsyncClient, tamper: str
) -> None:
    await put(app, "files/u/data.csv", b"1,2,3")
    await put(app, "files/v/other.csv", b"secret")
    expires = int(time.time()) + 60
    signer = UrlSigner(TEST_SECRET_KEY)
    url = signer.url("files/u/data.csv", expires, "d.csv")
    url = {
        "key": url.replace("files/u/data.csv", "files/v/other.csv"),
        "expiry": url.replace(f"expires={expires}", f"expires={expires + 3600}"),
        "filename": url.replace("filename=d.csv", "filename=evil.html"),
        "signature": url[:-2] + ("AA" if not url.endswith("AA") else "BB"),
        "other-secret": UrlSigner("another-secret").url("files/u/data.csv", expires, "d.csv"),
    }[tamper]

    response = await client.get(url)

    assert response.status_code == 403
    assert response.json()["type"].endswith("/download-link-invalid")
