"""Runs as MLflow users expect them: metric columns in the list, sorted and filtered by a metric,
finishing a run, and a linked version's metrics on its run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.factories import Account, make_version, upload_model
from tests.support.problems import assert_problem

API = "/api/v1/experiments"


async def run_with(
    client: httpx.AsyncClient, account: Account, name: str, **metrics: float
) -> dict[str, Any]:
    """Create run `name` and log `metrics` at step 5 (and a worse point at step 1)."""
    response = await client.post(
        API, json={"name": name, "parameters": {"run": name}}, headers=account.headers
    )
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    if metrics:
        points = [{"key": k, "value": v, "step": 5} for k, v in metrics.items()]
        # An earlier point of each key, worse on purpose: only the latest may count.
        points += [{"key": k, "value": -1.0, "step": 1} for k in metrics]
        logged = await client.post(
            f"{API}/{run['id']}/metrics", json=points, headers=account.headers
        )
        assert logged.status_code == 201, logged.text
    return run


async def names(client: httpx.AsyncClient, account: Account, **params: Any) -> list[str]:
    response = await client.get(API, params=params, headers=account.headers)
    assert response.status_code == 200, response.text
    return [item["name"] for item in response.json()["items"]]


async def test_list_shows_parameters_and_latest_metrics(
    client: httpx.AsyncClient, user: Account
) -> None:
    await run_with(client, user, "a", accuracy=0.9, loss=0.3)
    await run_with(client, user, "b")
    body = (await client.get(API, headers=user.headers)).json()
    by_name = {item["name"]: item for item in body["items"]}
    assert by_name["a"]["latest_metrics"] == pytest.approx({"accuracy": 0.9, "loss": 0.3})
    assert by_name["a"]["parameters"] == {"run": "a"}
    assert by_name["b"]["latest_metrics"] == {}


async def test_list_sorts_by_a_metric_with_runs_lacking_it_last(
    client: httpx.AsyncClient, user: Account
) -> None:
    await run_with(client, user, "mid", accuracy=0.8)
    await run_with(client, user, "none", loss=0.1)
    await run_with(client, user, "best", accuracy=0.95)
    await run_with(client, user, "worst", accuracy=0.5)
    assert await names(client, user, sort="metrics.accuracy", order="desc") == [
        "best",
        "mid",
        "worst",
        "none",
    ]
    assert await names(client, user, sort="metrics.accuracy", order="asc") == [
        "worst",
        "mid",
        "best",
        "none",
    ]
    assert await names(client, user, sort="name", order="asc") == ["best", "mid", "none", "worst"]
    page = await names(client, user, sort="metrics.accuracy", limit=2, offset=1)
    assert page == ["mid", "worst"]


async def test_list_filters_by_metric_thresholds(client: httpx.AsyncClient, user: Account) -> None:
    await run_with(client, user, "good", accuracy=0.95, loss=0.2)
    await run_with(client, user, "slow", accuracy=0.96, loss=0.9)
    await run_with(client, user, "bad", accuracy=0.6, loss=0.1)
    await run_with(client, user, "none")
    response = await client.get(
        API,
        params=[("filter", "metrics.accuracy>=0.9"), ("filter", "metrics.loss < 0.5")],
        headers=user.headers,
    )
    assert response.status_code == 200
    assert [item["name"] for item in response.json()["items"]] == ["good"]
    assert response.json()["total"] == 1
    # Only the latest point counts: every run had -1 at step 1.
    assert await names(client, user, filter="metrics.accuracy<0") == []
    assert await names(client, user, filter="metrics.accuracy!=0.6", sort="name", order="asc") == [
        "good",
        "slow",
    ]


@pytest.mark.parametrize(
    "params",
    [
        {"sort": "owner_id"},
        {"sort": "name; DROP TABLE experiments"},
        {"sort": "metrics."},
        {"sort": "metrics.a\x00b"},
        {"filter": "metrics.a\x00b>1"},
        {"filter": "accuracy>0.9"},
        {"filter": "metrics.accuracy>high"},
        {"filter": "metrics.accuracy>nan"},
        {"filter": "metrics.accuracy~0.9"},
        {"order": "sideways"},
    ],
)
async def test_list_rejects_unknown_sort_keys_and_bad_filters(
    client: httpx.AsyncClient, user: Account, params: dict[str, str]
) -> None:
    assert_problem(await client.get(API, params=params, headers=user.headers), 422)


async def test_a_metric_key_is_data_never_sql(client: httpx.AsyncClient, user: Account) -> None:
    key = "x') OR 1; DROP TABLE experiments; --"
    run = await run_with(client, user, "odd")
    logged = await client.post(
        f"{API}/{run['id']}/metrics", json=[{"key": key, "value": 2.0}], headers=user.headers
    )
    assert logged.status_code == 201
    await run_with(client, user, "plain")
    assert await names(client, user, sort=f"metrics.{key}") == ["odd", "plain"]
    assert await names(client, user, filter=f"metrics.{key}>1") == ["odd"]
    assert sorted(await names(client, user)) == ["odd", "plain"]


async def test_finishing_a_run_records_its_end_and_reopening_clears_it(
    client: httpx.AsyncClient, user: Account
) -> None:
    run = await run_with(client, user, "r")
    assert run["status"] == "running"
    assert run["ended_at"] is None
    url = f"{API}/{run['id']}"
    finished = (await client.patch(url, json={"status": "completed"}, headers=user.headers)).json()
    assert finished["status"] == "completed"
    assert finished["ended_at"] is not None
    assert finished["ended_at"] >= finished["created_at"]
    renamed = (await client.patch(url, json={"name": "r2"}, headers=user.headers)).json()
    assert renamed["ended_at"] == finished["ended_at"]
    failed = (await client.patch(url, json={"status": "failed"}, headers=user.headers)).json()
    assert failed["ended_at"] >= finished["ended_at"]
    reopened = (await client.patch(url, json={"status": "running"}, headers=user.headers)).json()
    assert reopened["ended_at"] is None
    assert await names(client, user, sort="ended_at") == ["r2"]


async def test_a_linked_versions_metrics_become_its_runs_latest_metrics(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    run = await run_with(client, user, "train", accuracy=0.7)
    await make_version(
        client,
        user,
        iris_skops,
        metrics={"accuracy": 0.97, "f1": 0.96},
        experiment_id=run["id"],
    )
    detail = (await client.get(f"{API}/{run['id']}", headers=user.headers)).json()
    latest = {m["key"]: (m["value"], m["step"]) for m in detail["metrics"]}
    # At the key's latest step, so it is the latest value; a new key starts at step 0.
    assert latest == {"accuracy": (pytest.approx(0.97), 5), "f1": (pytest.approx(0.96), 0)}
    assert [v["version"] for v in detail["model_versions"]] == [1]
    listed = (await client.get(API, headers=user.headers)).json()["items"][0]
    assert listed["latest_metrics"] == pytest.approx({"accuracy": 0.97, "f1": 0.96})


async def test_linking_a_version_later_records_its_metrics_on_the_run(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    run = await run_with(client, user, "train")
    await make_version(client, user, iris_skops, metrics={"auc": 0.91})
    url = "/api/v1/models/iris/versions/1"
    linked = await client.patch(url, json={"experiment_id": run["id"]}, headers=user.headers)
    assert linked.status_code == 200, linked.text
    again = await client.patch(url, json={"description": "same run"}, headers=user.headers)
    assert again.status_code == 200
    history = (await client.get(f"{API}/{run['id']}/metrics", headers=user.headers)).json()
    assert [(p["key"], p["value"]) for p in history] == [("auc", pytest.approx(0.91))]
    await client.patch(url, json={"metrics": {"auc": 0.93}}, headers=user.headers)
    detail = (await client.get(f"{API}/{run['id']}", headers=user.headers)).json()
    assert [(m["key"], m["value"]) for m in detail["metrics"]] == [("auc", pytest.approx(0.93))]


async def test_a_version_cannot_log_metrics_to_another_users_run(
    client: httpx.AsyncClient, user: Account, other_user: Account, iris_skops: Path
) -> None:
    theirs = await run_with(client, other_user, "private")
    await make_version(client, user, iris_skops, metrics={"a": 1.0})
    response = await client.patch(
        "/api/v1/models/iris/versions/1",
        json={"experiment_id": theirs["id"]},
        headers=user.headers,
    )
    assert_problem(response, 404)
    refused = await upload_model(
        client, user, iris_skops, metrics={"a": 1.0}, experiment_id=theirs["id"]
    )
    assert refused.status_code == 404
    history = await client.get(f"{API}/{theirs['id']}/metrics", headers=other_user.headers)
    assert history.json() == []
