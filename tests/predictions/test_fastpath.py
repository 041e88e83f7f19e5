"""The prediction fast path: warm requests skip FastAPI and answer exactly as the routes do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Receive, Scope, Send

from modelyard.app import create_app
from modelyard.db.tables import Prediction
from modelyard.predictions.fastpath import PredictFastPath
from modelyard.state import AppState
from tests.support.factories import Account, lifespan, make_account, make_version
from tests.support.settings import make_settings

NATIVE = "/api/v1/predict/iris"
V2 = "/v2/models/iris/infer"
V2_VERSION = "/v2/models/iris/versions/1/infer"
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
V2_BODY = {
    "id": "r1",
    "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": IRIS_ROWS}],
}
# What differs between two answers to the same request.
VOLATILE = {"prediction_id", "inference_time_ms"}


def handed_to_fastapi(app: FastAPI) -> list[str]:
    """Record the requests the fast path hands to FastAPI (it answered the others itself)."""
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    layer: Any = app.middleware_stack
    while not isinstance(layer, PredictFastPath):
        layer = layer.app
    seen: list[str] = []
    inner = layer.app

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.append(scope["path"])
        await inner(scope, receive, send)

    layer.app = recording
    return seen


async def logged(app: FastAPI) -> list[Prediction]:
    state: AppState = app.state.modelyard
    await state.prediction_log.flush()
    async with state.sessions() as db:
        return list(await db.scalars(select(Prediction).order_by(Prediction.created_at)))


def stable(response: httpx.Response) -> tuple[int, str, Any]:
    body = response.json()
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in VOLATILE}
    return response.status_code, response.headers["content-type"], body


async def test_warm_requests_skip_fastapi_and_answer_the_same(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    fastapi = handed_to_fastapi(app)
    for path, body in ((NATIVE, {"inputs": IRIS_ROWS}), (V2, V2_BODY), (V2_VERSION, V2_BODY)):
        cold = await client.post(path, json=body, headers=user.headers)
        warm = await client.post(path, json=body, headers=user.headers)
        assert cold.status_code == 200, cold.text
        assert stable(warm) == stable(cold)
        assert warm.headers["x-request-id"] != cold.headers["x-request-id"]
        assert "x-process-time" in warm.headers
    # Only the first request of each resolution reached FastAPI: V2's default version is the
    # one the native route resolved, the versioned path is a resolution of its own.
    assert fastapi == [NATIVE, V2_VERSION]
    # A query string always goes to the route.
    answer = await client.post(
        NATIVE, json={"inputs": IRIS_ROWS}, params={"version": 1}, headers=user.headers
    )
    assert answer.status_code == 200
    assert fastapi[-1] == NATIVE
    rows = await logged(app)
    assert [r.status for r in rows] == ["success"] * 7
    assert [r.protocol for r in rows] == ["rest", "rest", "v2", "v2", "v2", "v2", "rest"]


async def test_binary_tensors_take_the_fast_path(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 4],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": 64},
                }
            ],
            "outputs": [{"name": "predictions", "parameters": {"binary_data": True}}],
        }
    )
    body = header + np.asarray(IRIS_ROWS, dtype=np.float64).tobytes()
    headers = {**user.headers, "Inference-Header-Content-Length": str(len(header))}
    fastapi = handed_to_fastapi(app)
    answers = [await client.post(V2, content=body, headers=headers) for _ in range(2)]
    assert fastapi == [V2]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        length = int(answer.headers["inference-header-content-length"])
        meta = orjson.loads(answer.content[:length])
        assert meta["outputs"][0]["parameters"]["binary_data_size"] == 16
        assert np.frombuffer(answer.content[length:], dtype=np.int64).tolist() == [0, 2]


BAD_REQUESTS = [
    pytest.param(NATIVE, b'{"inputs": [[1, 2', id="native-invalid-json"),
    pytest.param(NATIVE, b'{"inputs": [[1, 2, 3, 4]], "x": 1}', id="native-extra-key"),
    pytest.param(NATIVE, b'{"inputs": [[1, 2, 3]]}', id="native-wrong-width"),
    pytest.param(NATIVE, b'{"inputs": [{"a": 1}]}', id="native-unnamed-features"),
    pytest.param(NATIVE, b'{"inputs": [[1, 2, "x", 4]]}', id="native-not-a-number"),
    pytest.param(V2, b'{"inputs": [', id="v2-invalid-json"),
    pytest.param(V2, b'{"inputs": []}', id="v2-no-input"),
    pytest.param(
        V2,
        b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}',
        id="v2-wrong-width",
    ),
]


@pytest.mark.parametrize(("path", "body"), BAD_REQUESTS)
async def test_bad_requests_get_the_routes_errors_and_are_logged_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    iris_skops: Path,
    path: str,
    body: bytes,
) -> None:
    await make_version(client, user, iris_skops)
    good = {"inputs": IRIS_ROWS} if path == NATIVE else V2_BODY
    assert (await client.post(path, json=good, headers=user.headers)).status_code == 200
    fastapi = handed_to_fastapi(app)
    headers = {**user.headers, "Content-Type": "application/json"}
    fast = await client.post(path, content=body, headers=headers)
    # Any query string sends the request through FastAPI and the route.
    routed = await client.post(path, content=body, headers=headers, params={"via": "route"})
    assert fastapi == [path]
    assert fast.status_code in (400, 422)
    assert stable(fast) == stable(routed)
    if path == NATIVE:
        assert fast.headers["content-type"] == "application/problem+json"
    else:
        assert set(fast.json()) == {"error"}
    rows = await logged(app)
    assert [r.status for r in rows] == ["success", "error", "error"]
    assert rows[1].error == rows[2].error


async def test_revocation_and_promotion_reach_the_fast_path_at_once(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    await make_version(client, user, iris_skops)
    created = await client.post("/api/v1/api-keys", json={"name": "k"}, headers=user.headers)
    assert created.status_code == 201, created.text
    key = {"X-API-Key": created.json()["key"]}

    async def served() -> int:
        answer = await client.post(NATIVE, json={"inputs": IRIS_ROWS}, headers=key)
        assert answer.status_code == 200, answer.text
        version: int = answer.json()["version"]
        return version

    assert [await served(), await served()] == [2, 2]
    promoted = await client.patch(
        "/api/v1/models/iris/versions/1/lifecycle",
        json={"stage": "production"},
        headers=user.headers,
    )
    assert promoted.status_code == 200, promoted.text
    assert [await served(), await served()] == [1, 1]

    revoked = await client.delete(f"/api/v1/api-keys/{created.json()['id']}", headers=user.headers)
    assert revoked.status_code == 204
    for path, body in ((NATIVE, {"inputs": IRIS_ROWS}), (V2, V2_BODY)):
        answer = await client.post(path, json=body, headers=key)
        assert answer.status_code == 401, answer.text


async def test_another_users_credential_never_reaches_a_cached_model(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    assert (await client.post(NATIVE, json={"inputs": IRIS_ROWS}, headers=user.headers)).is_success
    stranger = await make_account(client)
    for _ in range(2):
        answer = await client.post(NATIVE, json={"inputs": IRIS_ROWS}, headers=stranger.headers)
        assert answer.status_code == 404, answer.text
    for headers in ({}, {"Authorization": "Basic abc"}, {"X-API-Key": ""}):
        answer = await client.post(NATIVE, json={"inputs": IRIS_ROWS}, headers=headers)
        assert answer.status_code == 401, answer.text


async def make_key(client: httpx.AsyncClient, user: Account, **body: object) -> dict[str, str]:
    created = await client.post(
        "/api/v1/api-keys", json={"name": "k", **body}, headers=user.headers
    )
    assert created.status_code == 201, created.text
    return {"X-API-Key": created.json()["key"]}


async def test_a_predict_key_takes_the_fast_path_once_warm(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    key = await make_key(client, user, scopes=["predict"], models=["iris"])
    fastapi = handed_to_fastapi(app)
    for path, body in ((NATIVE, {"inputs": IRIS_ROWS}), (V2, V2_BODY)):
        cold = await client.post(path, json=body, headers=key)
        warm = await client.post(path, json=body, headers=key)
        assert cold.status_code == 200, cold.text
        assert stable(warm) == stable(cold)
    assert fastapi == [NATIVE]


@pytest.mark.parametrize(
    ("scopes", "models", "detail"),
    [
        (["read", "write"], None, "this API key lacks the `predict` scope"),
        (["predict"], ["wine"], "this API key is limited to the models 'wine'"),
    ],
    ids=["no-predict-scope", "another-model"],
)
@pytest.mark.parametrize(("path", "body"), [(NATIVE, {"inputs": IRIS_ROWS}), (V2, V2_BODY)])
async def test_a_key_that_may_not_predict_is_refused_alike_warm_and_cold(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    iris_skops: Path,
    scopes: list[str],
    models: list[str] | None,
    detail: str,
    path: str,
    body: dict[str, Any],
) -> None:
    await make_version(client, user, iris_skops)
    # The model and its resolution are cached, and so (after its first request) is the key.
    assert (await client.post(path, json=body, headers=user.headers)).status_code == 200
    key = await make_key(client, user, scopes=scopes, models=models)
    fastapi = handed_to_fastapi(app)
    cold = await client.post(path, json=body, headers=key)
    warm = await client.post(path, json=body, headers=key)
    assert cold.status_code == 403, cold.text
    assert stable(warm) == stable(cold)
    if path == NATIVE:
        assert cold.json()["detail"] == detail
    else:
        assert cold.json() == {"error": detail}
    # Refused by the route both times: the fast path never serves what a key may not do.
    assert fastapi == [path, path]
    assert [r.status for r in await logged(app)] == ["success"]


@pytest.fixture
async def limited(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    """An app allowing 3 predictions a minute per user, with a 1 KiB request body limit
    (`engine` deletes its rows after the test)."""
    settings = make_settings(
        tmp_path, database_url, predict_rate_limit_per_minute=3, max_request_bytes=1024
    )
    app = create_app(settings)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.mark.parametrize(("path", "body"), [(NATIVE, {"inputs": IRIS_ROWS}), (V2, V2_BODY)])
async def test_the_rate_limit_holds_on_both_protocols(
    limited: httpx.AsyncClient, iris_skops: Path, path: str, body: dict[str, Any]
) -> None:
    user = await make_account(limited)
    await make_version(limited, user, iris_skops)
    statuses = [(await limited.post(path, json=body, headers=user.headers)) for _ in range(4)]
    assert [s.status_code for s in statuses] == [200, 200, 200, 429]
    assert int(statuses[-1].headers["retry-after"]) >= 1


async def test_a_chunked_body_over_the_limit_is_refused_on_the_fast_path(
    limited: httpx.AsyncClient, iris_skops: Path
) -> None:
    user = await make_account(limited)
    await make_version(limited, user, iris_skops)
    assert (await limited.post(NATIVE, json={"inputs": IRIS_ROWS}, headers=user.headers)).is_success
    payload = orjson.dumps({"inputs": IRIS_ROWS * 40})

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 256):
            yield payload[start : start + 256]

    answer = await limited.post(NATIVE, content=chunks(), headers=user.headers)
    assert answer.status_code == 413, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert "1024" in answer.json()["detail"]


@pytest.mark.parametrize("expired", ["credential", "resolution"])
async def test_expired_answers_are_served_while_they_are_refreshed_in_the_background(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    iris_skops: Path,
    monkeypatch: pytest.MonkeyPatch,
    expired: str,
) -> None:
    state: AppState = app.state.modelyard
    if expired == "credential":
        state.target_cache.ttl_seconds = 3600  # the resolution outlives the credential
    await make_version(client, user, iris_skops)
    assert (await client.post(NATIVE, json={"inputs": IRIS_ROWS}, headers=user.headers)).is_success
    fastapi = handed_to_fastapi(app)
    cache: Any = state.caller_cache if expired == "credential" else state.target_cache
    (key,) = cache._entries
    # Past the lifetime (60 s for credentials, 5 s for resolutions), within the grace.
    later = time.monotonic() + cache.ttl_seconds + 1
    monkeypatch.setattr(cache, "clock", lambda: later)
    assert cache.lookup(key)[1] is True
    answer = await client.post(NATIVE, json={"inputs": IRIS_ROWS}, headers=user.headers)
    assert answer.status_code == 200, answer.text
    assert fastapi == []  # no request waits for the database...
    for _ in range(200):  # ...the refresh runs beside them
        if not cache._refreshing:
            break
        await asyncio.sleep(0.01)
    assert cache.lookup(key)[1] is False
    answer = await client.post(NATIVE, json={"inputs": IRIS_ROWS}, headers=user.headers)
    assert answer.status_code == 200
    assert fastapi == []


async def test_an_unreachable_dependency_is_a_503_on_both_paths(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    iris_skops: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await make_version(client, user, iris_skops)
    assert (await client.post(NATIVE, json={"inputs": IRIS_ROWS}, headers=user.headers)).is_success
    state: AppState = app.state.modelyard

    async def store_down(*_: Any) -> Any:
        raise ConnectionRefusedError("artifact store")  # a model evicted, its store gone

    monkeypatch.setattr(state.predictor, "runtime", store_down)
    fastapi = handed_to_fastapi(app)
    fast = await client.post(NATIVE, json={"inputs": IRIS_ROWS}, headers=user.headers)
    routed = await client.post(
        NATIVE, json={"inputs": IRIS_ROWS}, headers=user.headers, params={"via": "route"}
    )
    assert fastapi == [NATIVE]
    assert fast.status_code == 503, fast.text
    assert fast.headers["retry-after"] == routed.headers["retry-after"]
    assert stable(fast) == stable(routed)
