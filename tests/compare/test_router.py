"""`/api/v1/compare`: runs and versions side by side, serving figures, ownership and bounds."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelyard.state import AppState
from tests.drift.test_router import SCHEMA, normal_rows, put_reference, to_csv, upload_file
from tests.support.factories import Account, make_api_key, make_version
from tests.support.problems import assert_problem

EXPERIMENTS = "/api/v1/experiments"
RUNS = "/api/v1/compare/runs"
VERSIONS = "/api/v1/compare/versions"


async def make_run(
    client: httpx.AsyncClient,
    account: Account,
    name: str,
    parameters: dict[str, Any],
    points: list[tuple[str, int, float]],
) -> str:
    response = await client.post(
        EXPERIMENTS, json={"name": name, "parameters": parameters}, headers=account.headers
    )
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    if points:
        body = [{"key": k, "step": s, "value": v} for k, s, v in points]
        logged = await client.post(
            f"{EXPERIMENTS}/{run_id}/metrics", json=body, headers=account.headers
        )
        assert logged.status_code == 201, logged.text
    return run_id


def rows_by_key(rows: list[dict[str, Any]]) -> dict[str, tuple[list[Any], bool]]:
    return {row["key"]: (row["values"], row["differs"]) for row in rows}


async def test_compare_runs_marks_differences_and_gives_histories(
    client: httpx.AsyncClient, user: Account
) -> None:
    a = await make_run(
        client, user, "a", {"C": 1.0, "solver": "lbfgs"}, [("loss", 0, 0.9), ("loss", 1, 0.5)]
    )
    b = await make_run(
        client,
        user,
        "b",
        {"C": 0.1, "solver": "lbfgs", "l1": True},
        [("loss", 0, 0.8), ("loss", 1, 0.5), ("acc", 1, 0.9)],
    )
    response = await client.get(RUNS, params=[("id", b), ("id", a)], headers=user.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "runs"
    assert [item["label"] for item in body["items"]] == ["b", "a"]
    assert [item["status"] for item in body["items"]] == ["running", "running"]
    assert rows_by_key(body["params"]) == {
        "C": ([0.1, 1.0], True),
        "l1": ([True, None], True),
        "solver": (["lbfgs", "lbfgs"], False),
    }
    metrics = rows_by_key(body["metrics"])
    assert metrics["loss"] == ([pytest.approx(0.5), pytest.approx(0.5)], False)
    assert metrics["acc"] == ([pytest.approx(0.9), None], True)
    assert body["histories"]["loss"] == [
        [[0, pytest.approx(0.8)], [1, pytest.approx(0.5)]],
        [[0, pytest.approx(0.9)], [1, pytest.approx(0.5)]],
    ]
    assert body["histories"]["acc"] == [[[1, pytest.approx(0.9)]], []]
    assert body["serving"] is None


async def test_compare_versions_shows_metrics_and_live_serving_figures(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    run = await make_run(client, user, "train", {}, [("loss", 0, 0.7), ("loss", 3, 0.2)])
    v1 = await make_version(
        client,
        user,
        iris_skops,
        input_schema=SCHEMA,
        metrics={"accuracy": 0.9},
        hyperparameters={"C": 1.0},
        experiment_id=run,
    )
    v2 = await make_version(
        client, user, iris_skops, input_schema=SCHEMA, metrics={"accuracy": 0.95}
    )
    # Version 1 gets a reference and a shifted window: drift; version 2 never served.
    await upload_file(client, user, "ref/train.csv", to_csv(normal_rows(seed=1, n=600)))
    assert (await put_reference(client, user, "ref/train.csv")).status_code == 200
    await client.put("/api/v1/models/iris/aliases/first", json={"version": 1}, headers=user.headers)
    window = normal_rows(seed=2, n=600, shift=2.0)
    for start in range(0, 600, 200):
        response = await client.post(
            "/api/v1/predict/iris?version=1",
            json={"inputs": window[start : start + 200].tolist()},
            headers=user.headers,
        )
        assert response.status_code == 200, response.text
    state: AppState = app.state.modelyard
    await state.prediction_log.flush()

    response = await client.get(
        VERSIONS, params=[("id", v1["id"]), ("id", v2["id"])], headers=user.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "versions"
    assert [item["label"] for item in body["items"]] == ["iris v1", "iris v2"]
    assert body["items"][0]["experiment_id"] == run
    assert rows_by_key(body["metrics"])["accuracy"] == (
        [pytest.approx(0.9), pytest.approx(0.95)],
        True,
    )
    assert rows_by_key(body["params"])["C"] == ([1.0, None], True)
    # The linked run's history (its version's metrics joined it at link time).
    assert body["histories"]["loss"] == [[[0, pytest.approx(0.7)], [3, pytest.approx(0.2)]], []]
    assert body["histories"]["accuracy"] == [[[0, pytest.approx(0.9)]], []]
    first, second = body["serving"]
    assert first["requests"] == 3
    assert first["failures"] == 0
    assert first["p50_inference_time_ms"] > 0
    assert first["p95_inference_time_ms"] >= first["p50_inference_time_ms"]
    assert first["drift"] == "drifted"
    assert second == {
        "requests": 0,
        "failures": 0,
        "p50_inference_time_ms": None,
        "p95_inference_time_ms": None,
        "last_prediction_at": None,
        "drift": "no_reference",
    }


async def test_comparing_anothers_runs_or_versions_is_404(
    client: httpx.AsyncClient, user: Account, other_user: Account, iris_skops: Path
) -> None:
    mine = await make_run(client, user, "mine", {}, [])
    theirs = await make_run(client, other_user, "theirs", {}, [])
    response = await client.get(RUNS, params=[("id", mine), ("id", theirs)], headers=user.headers)
    body = assert_problem(response, 404)
    assert "theirs" not in response.text
    assert theirs in body["detail"]
    my_version = await make_version(client, user, iris_skops)
    their_version = await make_version(client, other_user, iris_skops)
    response = await client.get(
        VERSIONS,
        params=[("id", my_version["id"]), ("id", their_version["id"])],
        headers=user.headers,
    )
    assert_problem(response, 404)
    unknown = str(uuid.uuid4())
    response = await client.get(
        VERSIONS, params=[("id", my_version["id"]), ("id", unknown)], headers=user.headers
    )
    assert_problem(response, 404)


@pytest.mark.parametrize("url", [RUNS, VERSIONS])
@pytest.mark.parametrize("count", [0, 1, 11])
async def test_compare_needs_2_to_10_ids(
    client: httpx.AsyncClient, user: Account, url: str, count: int
) -> None:
    ids = {"id": [str(uuid.uuid4()) for _ in range(count)]}
    assert_problem(await client.get(url, params=ids, headers=user.headers), 422)


@pytest.mark.parametrize("url", [RUNS, VERSIONS])
async def test_compare_refuses_repeated_or_malformed_ids(
    client: httpx.AsyncClient, user: Account, url: str
) -> None:
    same = str(uuid.uuid4())
    assert_problem(await client.get(url, params=[("id", same)] * 2, headers=user.headers), 422)
    malformed = {"id": [same, "not-a-uuid"]}
    assert_problem(await client.get(url, params=malformed, headers=user.headers), 422)


async def test_compare_needs_credentials(client: httpx.AsyncClient) -> None:
    ids = {"id": [str(uuid.uuid4()), str(uuid.uuid4())]}
    for url in (RUNS, VERSIONS):
        assert (await client.get(url, params=ids)).status_code == 401


async def test_a_key_limited_to_models_cannot_compare(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    """Comparing names no single model, so a key limited to models is refused (as lists are)."""
    first = await make_version(client, user, iris_skops)
    second = await make_version(client, user, iris_skops)
    key = await make_api_key(client, user, scopes=["read"], models=["iris"])
    ids = {"id": [first["id"], second["id"]]}
    response = await client.get(VERSIONS, params=ids, headers={"X-API-Key": key})
    assert assert_problem(response, 403)["type"].endswith("outside-model-limit")
    everything = await make_api_key(client, user, scopes=["read"])
    allowed = await client.get(VERSIONS, params=ids, headers={"X-API-Key": everything})
    assert allowed.status_code == 200, allowed.text
