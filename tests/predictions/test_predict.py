"""`POST /api/v1/predict/{model}`: reference predictions, resolution, every 422, the log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from modelyard.db.tables import Prediction
from modelyard.state import AppState
from tests.predictions.reference import features, reference
from tests.serving import legit
from tests.support.factories import Account, lifespan, make_version

API = "/api/v1/predict"
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


async def logged(app: FastAPI) -> list[Prediction]:
    state: AppState = app.state.modelyard
    await state.prediction_log.flush()
    async with state.sessions() as db:
        return list(await db.scalars(select(Prediction).order_by(Prediction.created_at)))


async def predict(
    client: httpx.AsyncClient, account: Account, model: str, body: Any, **params: Any
) -> httpx.Response:
    return await client.post(f"{API}/{model}", json=body, params=params, headers=account.headers)


@pytest.mark.parametrize("case", legit.LEGIT_FILES, ids=lambda c: c.name)
async def test_predictions_equal_the_in_process_model(
    client: httpx.AsyncClient, user: Account, model_file: legit.ModelFile, case: legit.LegitCase
) -> None:
    path = model_file(case.name)
    await make_version(client, user, path, name="m")
    x = features(case)
    response = await predict(client, user, "m", {"inputs": x.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    expected, expected_proba = reference(case, path, x)
    if case.task_type == "classification":
        assert body["predictions"] == expected
        assert body["classes"] == case.classes
        np.testing.assert_allclose(body["probabilities"], expected_proba, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            body["confidence"], np.max(expected_proba, axis=1), rtol=1e-4, atol=1e-5
        )
    else:
        np.testing.assert_allclose(body["predictions"], expected, rtol=1e-4, atol=1e-4)
        assert "probabilities" not in body
    assert body["model_name"] == "m"
    assert body["version"] == 1
    assert body["inference_time_ms"] >= 0


async def test_named_records_match_the_schema_in_any_key_order(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    schema = {"features": [{"name": n} for n in NAMES]}
    await make_version(client, user, iris_skops, input_schema=schema)
    rows = await predict(client, user, "iris", {"inputs": IRIS_ROWS})
    records = [dict(zip(NAMES, row, strict=True)) for row in IRIS_ROWS]
    shuffled = [dict(reversed(list(r.items()))) for r in records]
    named = await predict(client, user, "iris", {"inputs": shuffled})
    assert named.status_code == 200, named.text
    assert named.json()["predictions"] == rows.json()["predictions"] == [0, 2]
    assert named.json()["probabilities"] == rows.json()["probabilities"]


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ([], "non-empty"),
        ("5.1,3.5", "non-empty list"),
        ([[5.1, 3.5, 1.4]], "takes 4 features"),
        ([[5.1, 3.5, 1.4, 0.2], [1.0, 2.0]], "inputs[1] has 2 values"),
        ([[5.1, "x", 1.4, 0.2]], "inputs[0][1] is not a number"),
        ([[5.1, None, 1.4, 0.2]], "inputs[0][1] is not a number"),
        ([[5.1, [1], 1.4, 0.2]], "inputs[0][1]"),
        ([5.1, 3.5, 1.4, 0.2], "inputs[0] must be"),
        ([{"sepal_length": 1, "sepal_width": 2, "petal_length": 3}], "missing petal_width"),
        (
            [{"sepal_length": 1, "sepal_width": 2, "petal_length": 3, "petal_widht": 4}],
            "unknown petal_widht",
        ),
        ([dict.fromkeys(NAMES, 1) | {"extra": 1}], "unknown extra"),
        ([dict.fromkeys(NAMES, 1), [1, 2, 3, 4]], "inputs[1] is not a record"),
        ([dict.fromkeys(NAMES, "a")], "is not a number"),
    ],
)
async def test_inputs_that_do_not_fit_answer_422_and_are_logged(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    iris_skops: Path,
    inputs: Any,
    fragment: str,
) -> None:
    schema = {"features": [{"name": n} for n in NAMES]}
    await make_version(client, user, iris_skops, input_schema=schema)
    response = await predict(client, user, "iris", {"inputs": inputs})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert fragment in response.json()["detail"]
    rows = await logged(app)
    assert [(r.status, r.protocol) for r in rows] == [("error", "rest")]
    assert fragment in (rows[0].error or "")
    assert rows[0].user_id is not None


@pytest.mark.parametrize(
    "content",
    [
        b'{"inputs": [[NaN, 1, 2, 3]]}',
        b'{"inputs": [[Infinity, 1, 2, 3]]}',
        b'{"inputs": [[1e999, 1, 2, 3]]}',
        b"not json",
    ],
)
async def test_non_finite_or_malformed_json_is_refused(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path, content: bytes
) -> None:
    await make_version(client, user, iris_skops)
    response = await client.post(
        f"{API}/iris",
        content=content,
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert response.status_code in (400, 422)
    assert [r.status for r in await logged(app)] == ["error"]


async def test_extra_body_fields_and_too_many_rows_are_refused(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    extra = await predict(client, user, "iris", {"inputs": IRIS_ROWS, "debug": True})
    assert extra.status_code == 422
    too_many = await predict(client, user, "iris", {"inputs": IRIS_ROWS * 6000})
    assert too_many.status_code == 422
    assert "more than the 10000" in too_many.json()["detail"]


async def test_resolution_default_version_alias_and_stage(
    client: httpx.AsyncClient, user: Account, model_file: legit.ModelFile
) -> None:
    await make_version(client, user, model_file("lr_skops"))  # v1: iris labels 0..2
    await make_version(client, user, model_file("lr_species_skops"))  # v2: species names
    body = {"inputs": IRIS_ROWS}

    async def served(**params: Any) -> tuple[int, Any]:
        response = await predict(client, user, "iris", body, **params)
        assert response.status_code == 200, response.text
        return response.json()["version"], response.json()["predictions"]

    assert await served() == (2, ["setosa", "virginica"])  # newest when none in production
    await client.patch(
        "/api/v1/models/iris/versions/1/lifecycle",
        json={"stage": "production"},
        headers=user.headers,
    )
    assert await served() == (1, [0, 2])  # a promotion changes what the default serves
    assert await served(version=2) == (2, ["setosa", "virginica"])
    await client.put(
        "/api/v1/models/iris/aliases/challenger", json={"version": 2}, headers=user.headers
    )
    assert (await served(alias="challenger"))[0] == 2
    assert (await served(stage="production"))[0] == 1
    both = await predict(client, user, "iris", body, version=1, alias="challenger")
    assert both.status_code == 422
    missing = await predict(client, user, "iris", body, version=9)
    assert missing.status_code == 404
    no_alias = await predict(client, user, "iris", body, alias="nope")
    assert no_alias.status_code == 404
    no_stage = await predict(client, user, "iris", body, stage="staging")
    assert no_stage.status_code == 404


async def test_archived_versions_and_models_are_never_served(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    await make_version(client, user, iris_skops)
    await client.delete("/api/v1/models/iris/versions/2", headers=user.headers)
    body = {"inputs": IRIS_ROWS}
    assert (await predict(client, user, "iris", body)).json()["version"] == 1
    archived = await predict(client, user, "iris", body, version=2)
    assert archived.status_code == 409
    assert (await predict(client, user, "iris", body, stage="archived")).status_code == 422
    await client.delete("/api/v1/models/iris", headers=user.headers)
    gone = await predict(client, user, "iris", body)
    assert gone.status_code == 409


async def test_another_users_model_cannot_be_predicted(
    client: httpx.AsyncClient, user: Account, other_user: Account, iris_skops: Path
) -> None:
    version = await make_version(client, user, iris_skops)
    for ref in ("iris", version["model_id"]):
        response = await predict(client, other_user, ref, {"inputs": IRIS_ROWS})
        assert response.status_code == 404
    unauthenticated = await client.post(f"{API}/iris", json={"inputs": IRIS_ROWS})
    assert unauthenticated.status_code == 401


async def test_every_prediction_is_logged_with_its_caller(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    version = await make_version(client, user, iris_skops)
    key = (await client.post("/api/v1/api-keys", json={"name": "ci"}, headers=user.headers)).json()[
        "key"
    ]
    ok = await client.post(f"{API}/iris", json={"inputs": IRIS_ROWS}, headers={"X-API-Key": key})
    assert ok.status_code == 200
    rows = await logged(app)
    assert len(rows) == 1
    row = rows[0]
    assert str(row.id) == ok.json()["prediction_id"]
    assert (str(row.model_id), row.version, row.status, row.n_rows) == (
        version["model_id"],
        1,
        "success",
        2,
    )
    assert str(row.user_id) == user.id
    assert row.api_key_id is not None
    assert row.inputs == IRIS_ROWS
    assert row.outputs is not None
    assert row.outputs["predictions"] == [0, 2]


async def test_concurrent_first_requests_load_the_model_once(
    app: FastAPI, client: httpx.AsyncClient, user: Account, model_file: legit.ModelFile
) -> None:
    await make_version(client, user, model_file("forest_skops"), name="forest")
    state: AppState = app.state.modelyard
    misses = state.metrics.registry.get_sample_value("modelyard_model_cache_misses_total") or 0
    responses = await asyncio.gather(
        *(predict(client, user, "forest", {"inputs": IRIS_ROWS}) for _ in range(12))
    )
    assert [r.status_code for r in responses] == [200] * 12
    assert len({tuple(r.json()["predictions"]) for r in responses}) == 1
    after = state.metrics.registry.get_sample_value("modelyard_model_cache_misses_total") or 0
    assert after - misses == 1
    assert len(await logged(app)) == 12


async def test_onnx_prediction_past_its_time_budget_answers_422_and_is_logged(
    tmp_path: Path, database_url: str, engine: Any
) -> None:

    from modelyard.app import create_app
    from tests.serving import hostile
    from tests.support.factories import make_account
    from tests.support.settings import make_settings

    # Cheap on the probe's one row, ~100x heavier on 32: the shape of the attack.
    model = hostile.onnx_costly_per_row(tmp_path, repeats=25_000, passes=100)
    app = create_app(make_settings(tmp_path, database_url, predict_timeout_seconds=0.01))
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            account = await make_account(c)
            await make_version(c, account, model, name="costly")
            response = await predict(c, account, "costly", {"inputs": [[1.0] * 4] * 32})
            assert response.status_code == 422, response.text
            assert response.headers["content-type"] == "application/problem+json"
            body = response.json()
            assert body["type"].endswith("/inference-limit-exceeded")
            assert body["detail"] == "the model took longer than 0.01 s on these inputs"
            rows = await logged(app)
            assert [(r.status, r.error) for r in rows] == [("error", body["detail"])]
