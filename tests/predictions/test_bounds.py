"""Issue #10: what a hostile predict request costs and answers, on both protocols and both paths.

Each test reproduces an attack from the adversarial run, scaled down, and checks the answer
rather than the time it took: that the refusal comes from the cheap check (a malformed tail
behind the refused part would otherwise be reported instead), and that answers and log rows
stay small. The fast path and the routed path must answer byte for byte alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.app import create_app
from tests.predictions.test_fastpath import (
    IRIS_ROWS,
    NATIVE,
    V2,
    V2_BODY,
    handed_to_fastapi,
    logged,
)
from tests.support.factories import Account, lifespan, make_account, make_version
from tests.support.predictions import truncation
from tests.support.settings import make_settings

V2_VERSION_PATH = "/v2/models/iris/versions/{}/infer"
LOG_BUDGET = 64 * 1024  # MODELYARD_PREDICTION_LOG_MAX_PAYLOAD_BYTES's default


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


# --- finding 5: cheap checks before per-element work, bounded messages ----------------------

ELEMENTS = 200_000  # the attack sent 4 M; enough to show which check answered
NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def bytes_tensor_body(n: int) -> tuple[bytes, int]:
    """A V2 binary body: one BYTES tensor [n/4, 4] of empty elements whose last one is torn."""
    elements = b"\x00\x00\x00\x00" * (n - 1) + b"\x05\x00\x00\x00"  # 5 bytes announced, none
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [n // 4, 4],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(elements)},
                }
            ]
        }
    )
    return header + elements, len(header)


async def test_a_binary_bytes_tensor_is_refused_from_its_header(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await warm(client, user, iris_skops, V2)
    body, length = bytes_tensor_body(ELEMENTS)
    headers = httpx.Headers({**user.headers, "Inference-Header-Content-Length": str(length)})
    fast, routed = await fast_and_routed(client, V2, body, headers)
    # Reading the elements would have found the torn last one and said so.
    assert fast.status_code == 400, fast.text
    assert fast.json() == {"error": "input 'x' must be numeric, not BYTES"}
    assert_same(fast, routed)
    rows = await logged(app)
    assert [r.error for r in rows[1:]] == ["input 'x' must be numeric, not BYTES"] * 2


async def test_a_json_bytes_tensor_is_refused_before_its_strings_are_read(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await warm(client, user, iris_skops, V2)
    data: list[object] = [""] * (ELEMENTS - 1) + [0]  # reading them would refuse the 0
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [ELEMENTS // 4, 4], "datatype": "BYTES", "data": data}]}
    )
    headers = httpx.Headers({**user.headers, "Content-Type": "application/json"})
    fast, routed = await fast_and_routed(client, V2, body, headers)
    assert fast.status_code == 400, fast.text
    assert fast.json() == {"error": "input 'x' must be numeric, not BYTES"}
    assert_same(fast, routed)


async def test_a_huge_tensor_name_is_quoted_cut_short(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await warm(client, user, iris_skops, V2)
    name = "n" * 100_000
    body = orjson.dumps(
        {"inputs": [{"name": name, "shape": [1, 4], "datatype": "BOOL", "data": [True] * 4}]}
    )
    headers = httpx.Headers({**user.headers, "Content-Type": "application/json"})
    fast, routed = await fast_and_routed(client, V2, body, headers)
    assert fast.status_code == 400, fast.text
    assert fast.json() == {
        "error": f"input {'n' * 64!r}... (100000 characters) must be numeric, not BOOL"
    }
    assert_same(fast, routed)


async def test_a_record_with_many_unknown_keys_gets_a_short_answer(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(
        client, user, iris_skops, input_schema={"features": [{"name": n} for n in NAMES]}
    )
    good = {"inputs": [dict(zip(NAMES, IRIS_ROWS[0], strict=True))]}
    assert (await client.post(NATIVE, json=good, headers=user.headers)).status_code == 200
    record = {f"k{i}": 1 for i in range(ELEMENTS)} | {"sepal_length": 1.0}
    headers = httpx.Headers({**user.headers, "Content-Type": "application/json"})
    fast, routed = await fast_and_routed(
        client, NATIVE, orjson.dumps({"inputs": [record]}), headers
    )
    detail = (
        "inputs[0]: missing sepal_width, petal_length, petal_width; "
        f"unknown k0, k1, k2, k3, k4 and {ELEMENTS - 5} more"
    )
    assert fast.status_code == 422, fast.text
    assert fast.json()["detail"] == detail
    assert len(fast.content) < 1024
    assert_same(fast, routed)
    rows = await logged(app)
    assert [r.error for r in rows[1:]] == [detail, detail]
    for row in rows[1:]:  # the record itself, 2.6 MB, is not stored whole
        truncation(row.inputs, budget=LOG_BUDGET)


async def test_long_unknown_keys_are_listed_cut_short(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(
        client, user, iris_skops, input_schema={"features": [{"name": n} for n in NAMES]}
    )
    record = dict.fromkeys(NAMES[:3], 1.0) | {"x" * 100_000: 1.0}
    answer = await client.post(NATIVE, json={"inputs": [record]}, headers=user.headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == (f"inputs[0]: missing petal_width; unknown {'x' * 64}...")


async def test_a_row_wider_than_the_model_is_refused_by_its_length(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await warm(client, user, iris_skops, NATIVE)
    row: list[object] = [1.0] * (ELEMENTS - 1) + ["x"]  # reading it would find the string
    headers = httpx.Headers({**user.headers, "Content-Type": "application/json"})
    fast, routed = await fast_and_routed(client, NATIVE, orjson.dumps({"inputs": [row]}), headers)
    assert fast.status_code == 422, fast.text
    assert fast.json()["detail"] == f"the model takes 4 features; inputs[0] has {ELEMENTS}"
    assert_same(fast, routed)


@pytest.fixture
async def small(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    """An app allowing at most 100 input values per prediction request (`engine` deletes its
    rows after the test)."""
    app = create_app(make_settings(tmp_path, database_url, max_predict_elements=100))
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_requests_past_the_element_limit_are_refused_on_both_protocols(
    small: httpx.AsyncClient, iris_skops: Path
) -> None:
    client = small
    user = await make_account(client)
    await warm(client, user, iris_skops, NATIVE)
    assert (await client.post(V2, json=V2_BODY, headers=user.headers)).status_code == 200
    rows: list[list[object]] = [[5.1, 3.5, 1.4, 0.2]] * 25  # 100 values: the most allowed
    assert (await client.post(NATIVE, json={"inputs": rows}, headers=user.headers)).is_success
    headers = httpx.Headers({**user.headers, "Content-Type": "application/json"})
    rows.append(["x", 1.0, 1.0, 1.0])  # 104 values; reading them would refuse the "x"
    fast, routed = await fast_and_routed(client, NATIVE, orjson.dumps({"inputs": rows}), headers)
    assert fast.status_code == 422, fast.text
    assert fast.json()["detail"] == (
        "26 rows of 4 values is 104 values, more than the 100 allowed per request"
    )
    assert_same(fast, routed)
    tensor = {"name": "x", "shape": [26, 4], "datatype": "FP64", "data": rows}
    fast, routed = await fast_and_routed(client, V2, orjson.dumps({"inputs": [tensor]}), headers)
    assert fast.status_code == 400, fast.text
    assert fast.json() == {
        "error": "input 'x': shape [26,4] holds 104 elements, more than the limit of 100"
    }
    assert_same(fast, routed)


# --- finding 6: the prediction log's payload budget -------------------------------------------


async def test_a_large_successful_batch_is_logged_within_the_budget(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    rows = IRIS_ROWS * 5000  # 10,000 rows: about 200 KB of inputs, more of outputs
    native = await client.post(NATIVE, json={"inputs": rows}, headers=user.headers)
    tensor = {"name": "x", "shape": [len(rows), 4], "datatype": "FP64", "data": rows}
    v2 = await client.post(V2, json={"inputs": [tensor]}, headers=user.headers)
    assert (native.status_code, v2.status_code) == (200, 200), native.text + v2.text
    assert len(native.json()["predictions"]) == len(rows)
    logged_rows = await logged(app)
    assert [(r.status, r.n_rows) for r in logged_rows] == [("success", len(rows))] * 2
    for row in logged_rows:
        truncation(row.outputs, budget=LOG_BUDGET)
        inputs = truncation(row.inputs, budget=LOG_BUDGET)
        assert inputs["preview"].startswith("[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3],")
