"""Issue #10: what a hostile predict request costs and answers, on both protocols and both paths.

Each test reproduces an attack from the adversarial run, scaled down, and checks the answer
rather than the time it took: that the refusal comes from the cheap check (a malformed tail
behind the refused part would otherwise be reported instead), and that answers and log rows
stay small. The fast path and the routed path must answer byte for byte alike.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest
from fastapi import FastAPI

from tests.factories import Account, make_version
from tests.predictions.test_fastpath import IRIS_ROWS, V2, V2_BODY, handed_to_fastapi, logged

V2_VERSION_PATH = "/v2/models/iris/versions/{}/infer"


async def warm(client: httpx.AsyncClient, user: Account, iris_skops: Path, path: str) -> None:
    """Upload iris and send one good request, so that the next ones can take the fast path."""
    await make_version(client, user, iris_skops)
    good = {"inputs": IRIS_ROWS} if path.startswith("/api") else V2_BODY
    assert (await client.post(path, json=good, headers=user.headers)).status_code == 200


async def fast_and_routed(
    client: httpx.AsyncClient, path: str, content: bytes, headers: httpx.Headers
) -> tuple[httpx.Response, httpx.Response]:
    """Send a request twice: as is (fast path when warm), and with a query (FastAPI's route)."""
    fast = await client.post(path, content=content, headers=headers)
    routed = await client.post(path, content=content, headers=headers, params={"via": "route"})
    return fast, routed


def assert_same(fast: httpx.Response, routed: httpx.Response) -> None:
    assert (fast.status_code, fast.headers["content-type"], fast.content) == (
        routed.status_code,
        routed.headers["content-type"],
        routed.content,
    )


# --- finding 12: Inference-Header-Content-Length and the path's version ----------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\xb2", id="superscript-two"),  # "²": isdigit() is true, int() refuses it
        pytest.param(b"\xb9\xb2", id="superscripts"),
        pytest.param(b"1" * 5000, id="past-int-digit-limit"),
        pytest.param(b" 64", id="space"),
        pytest.param(b"6_4", id="underscore"),
        pytest.param(b"+64", id="sign"),
        pytest.param(b"", id="empty"),
    ],
)
async def test_a_header_length_that_is_not_ascii_digits_is_a_400(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path, value: bytes
) -> None:
    await warm(client, user, iris_skops, V2)
    fastapi = handed_to_fastapi(app)
    headers = httpx.Headers(
        [(k.encode(), v.encode()) for k, v in user.headers.items()]
        + [(b"content-type", b"application/json"), (b"inference-header-content-length", value)]
    )
    fast, routed = await fast_and_routed(client, V2, orjson.dumps(V2_BODY), headers)
    assert fastapi == [V2]
    assert fast.status_code == 400, fast.text
    assert fast.json() == {"error": "inference-header-content-length must be a byte count"}
    assert_same(fast, routed)
    assert [r.status for r in await logged(app)] == ["success", "error", "error"]


@pytest.mark.parametrize(
    "version",
    [
        pytest.param("%C2%B2", id="superscript-two"),
        pytest.param("%D9%A1", id="arabic-indic-one"),  # int() reads it as 1
        pytest.param("0" * 4999 + "1", id="past-int-digit-limit"),
        pytest.param("+1", id="sign"),
    ],
)
async def test_a_version_that_is_not_ascii_digits_is_a_400(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path, version: str
) -> None:
    await warm(client, user, iris_skops, V2)
    path = V2_VERSION_PATH.format(version)
    headers = httpx.Headers({**user.headers, "Content-Type": "application/json"})
    fast, routed = await fast_and_routed(client, path, orjson.dumps(V2_BODY), headers)
    assert fast.status_code == 400, fast.text
    assert "is not a version number of this server" in fast.json()["error"]
    assert len(fast.content) < 200
    assert_same(fast, routed)
