"""Traffic policies: weighted and sticky routes, shadow versions, their analytics, both protocols
and the fast path."""

from __future__ import annotations

import math
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from modelyard.auth.service import Caller
from modelyard.config import Settings
from modelyard.db.tables import Prediction, User
from modelyard.predictions import rest, targets
from modelyard.predictions.log import rollups
from modelyard.predictions.log.spool import parse_row
from modelyard.predictions.shadow import compare
from modelyard.predictions.targets import Target, Traffic
from modelyard.predictions.traffic import routing
from modelyard.registry.schemas import Stage
from modelyard.serving.formats import Framework, ModelFormat
from modelyard.state import AppState
from tests.predictions.test_fastpath import handed_to_fastapi, stable
from tests.support.factories import Account, make_account, make_api_key, make_version
from tests.support.settings import make_settings

NATIVE = "/api/v1/predict/iris"
V2 = "/v2/models/iris/infer"
TRAFFIC = "/api/v1/models/iris/traffic"
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
V2_BODY = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": IRIS_ROWS}]}
SEED = 20261129


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # A fixed seed: the random draws of every test are the same on every run.
    return make_settings(tmp_path, database_url, traffic_random_seed=SEED)


def state_of(app: FastAPI) -> AppState:
    state: AppState = app.state.modelyard
    return state


async def two_versions(client: httpx.AsyncClient, user: Account, path: Path) -> None:
    """Upload `path` twice as iris: versions 1 and 2, and make version 1 production."""
    await make_version(client, user, path)
    await make_version(client, user, path)
    promoted = await client.patch(
        "/api/v1/models/iris/versions/1/lifecycle",
        json={"stage": "production"},
        headers=user.headers,
    )
    assert promoted.status_code == 200, promoted.text


async def put_policy(client: httpx.AsyncClient, user: Account, policy: dict[str, Any]) -> Any:
    answer = await client.put(TRAFFIC, json=policy, headers=user.headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def served(
    client: httpx.AsyncClient, user: Account, *, key: str | None = None, v2: bool = False
) -> int:
    """Predict once without naming a version; return the version that served."""
    headers = {**user.headers, **({"X-Routing-Key": key} if key is not None else {})}
    if v2:
        answer = await client.post(V2, json=V2_BODY, headers=headers)
        assert answer.status_code == 200, answer.text
        return int(answer.json()["model_version"])
    answer = await client.post(NATIVE, json={"inputs": IRIS_ROWS}, headers=headers)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["version"])


async def logged(app: FastAPI) -> list[Prediction]:
    state = state_of(app)
    await state.predictor.drain_shadows()
    await state.prediction_log.flush()
    async with state.sessions() as db:
        return list(await db.scalars(select(Prediction).order_by(Prediction.created_at)))


def primary_of(row: Prediction, primaries: dict[uuid.UUID, Prediction]) -> Prediction:
    assert row.shadow_of is not None
    return primaries[row.shadow_of]


def predictions_of(row: Prediction) -> list[Any]:
    assert isinstance(row.outputs, dict)
    found: list[Any] = row.outputs["predictions"]
    return found


def binomial_bounds(n: int, p: float, z: float = 3.29) -> tuple[float, float]:
    """The two-sided 99.9 % interval of a binomial count (normal approximation)."""
    spread = z * math.sqrt(n * p * (1 - p))
    return n * p - spread, n * p + spread


# --- the policy ---------------------------------------------------------------------------------


async def test_policy_is_set_shown_and_removed(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await two_versions(client, user, iris_skops)
    aliased = await client.put(
        "/api/v1/models/iris/aliases/challenger", json={"version": 2}, headers=user.headers
    )
    assert aliased.status_code == 200
    assert (await client.get(TRAFFIC, headers=user.headers)).status_code == 404
    policy = {
        "routes": [
            {"target": "production", "weight": 90},
            {"target": "challenger", "weight": 10},
        ],
        "shadow": {"target": "v2", "sample_rate": 0.5},
    }
    body = await put_policy(client, user, policy)
    assert body["routes"] == [
        {"target": "production", "weight": 90, "version": 1},
        {"target": "challenger", "weight": 10, "version": 2},
    ]
    assert body["shadow"] == {"target": "v2", "sample_rate": 0.5, "version": 2}
    shown = await client.get(TRAFFIC, headers=user.headers)
    assert shown.status_code == 200
    assert shown.json() == body
    # Replaced whole: the shadow goes with the body that leaves it out.
    replaced = await put_policy(client, user, {"routes": [{"target": "latest", "weight": 1}]})
    assert replaced["routes"] == [{"target": "latest", "weight": 1, "version": 2}]
    assert replaced["shadow"] is None
    removed = await client.delete(TRAFFIC, headers=user.headers)
    assert removed.status_code == 204
    assert (await client.get(TRAFFIC, headers=user.headers)).status_code == 404
    assert (await client.delete(TRAFFIC, headers=user.headers)).status_code == 404


async def test_policy_changes_are_audited(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await two_versions(client, user, iris_skops)
    await put_policy(client, user, {"routes": [{"target": "v2", "weight": 3}]})
    assert (await client.delete(TRAFFIC, headers=user.headers)).status_code == 204
    audit = await client.get(
        "/api/v1/audit", params={"action": "traffic.changed"}, headers=user.headers
    )
    assert audit.status_code == 200, audit.text
    details = [item["details"] for item in audit.json()["items"]]
    assert {"model": "iris", "routes": None, "shadow": None} in details
    assert {"model": "iris", "routes": [{"target": "v2", "weight": 3}], "shadow": None} in details


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param({"routes": []}, id="no-route"),
        pytest.param({}, id="no-routes-field"),
        pytest.param({"routes": [{"target": "v1", "weight": -1}]}, id="negative-weight"),
        pytest.param({"routes": [{"target": "v1", "weight": 0}]}, id="weights-sum-to-zero"),
        pytest.param({"routes": [{"target": "v1", "weight": 1.5}]}, id="fractional-weight"),
        pytest.param(
            {"routes": [{"target": "v1", "weight": 1}, {"target": "v1", "weight": 2}]},
            id="duplicate-target",
        ),
        pytest.param(
            {"routes": [{"target": "v1", "weight": 1}], "shadow": {"target": "v2"}},
            id="shadow-without-rate",
        ),
        pytest.param(
            {
                "routes": [{"target": "v1", "weight": 1}],
                "shadow": {"target": "v2", "sample_rate": 0},
            },
            id="rate-zero",
        ),
        pytest.param(
            {
                "routes": [{"target": "v1", "weight": 1}],
                "shadow": {"target": "v2", "sample_rate": 1.5},
            },
            id="rate-above-one",
        ),
        pytest.param(
            {
                "routes": [{"target": "v1", "weight": 1}],
                "shadow": {"target": "v1", "sample_rate": 0.5},
            },
            id="shadow-is-a-route",
        ),
        pytest.param({"routes": [{"target": "archived", "weight": 1}]}, id="archived-stage"),
        pytest.param({"routes": [{"target": "v0", "weight": 1}]}, id="version-zero"),
        pytest.param({"routes": [{"target": "Bad Alias!", "weight": 1}]}, id="bad-target"),
        pytest.param({"routes": [{"target": "v1", "weight": 1, "extra": 1}]}, id="unknown-field"),
        pytest.param({"routes": [{"target": "v1", "weight": 1}] * 11}, id="too-many-routes"),
    ],
)
async def test_invalid_policies_are_refused_with_422(
    client: httpx.AsyncClient, user: Account, iris_skops: Path, policy: dict[str, Any]
) -> None:
    await two_versions(client, user, iris_skops)
    answer = await client.put(TRAFFIC, json=policy, headers=user.headers)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"]
    assert (await client.get(TRAFFIC, headers=user.headers)).status_code == 404


@pytest.mark.parametrize("target", ["v9", "nobody", "staging"])
async def test_a_target_that_resolves_to_nothing_is_a_conflict(
    client: httpx.AsyncClient, user: Account, iris_skops: Path, target: str
) -> None:
    await two_versions(client, user, iris_skops)
    answer = await client.put(
        TRAFFIC, json={"routes": [{"target": target, "weight": 1}]}, headers=user.headers
    )
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert repr(target) in answer.json()["detail"]


async def test_another_users_model_has_no_policy_to_see_or_set(
    client: httpx.AsyncClient, user: Account, other_user: Account, iris_skops: Path
) -> None:
    await two_versions(client, user, iris_skops)
    await put_policy(client, user, {"routes": [{"target": "v2", "weight": 1}]})
    body = {"routes": [{"target": "v1", "weight": 1}]}
    for method in ("GET", "PUT", "DELETE"):
        answer = await client.request(
            method, TRAFFIC, json=body if method == "PUT" else None, headers=other_user.headers
        )
        assert answer.status_code == 404, (method, answer.text)
    stats = await client.get(f"{TRAFFIC}/stats", headers=other_user.headers)
    assert stats.status_code == 404
    assert (await client.get(TRAFFIC, headers=user.headers)).json()["routes"][0]["target"] == "v2"


async def test_api_key_scopes_read_and_write(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await two_versions(client, user, iris_skops)
    body = {"routes": [{"target": "v2", "weight": 1}]}
    reader = {"X-API-Key": await make_api_key(client, user, "reader", scopes=["read"])}
    writer = {"X-API-Key": await make_api_key(client, user, "writer", scopes=["write"])}
    refused = await client.put(TRAFFIC, json=body, headers=reader)
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("missing-scope")
    assert (await client.put(TRAFFIC, json=body, headers=writer)).status_code == 200
    assert (await client.get(TRAFFIC, headers=writer)).status_code == 403
    assert (await client.get(TRAFFIC, headers=reader)).status_code == 200
    assert (await client.get(f"{TRAFFIC}/stats", headers=reader)).status_code == 200
    assert (await client.delete(TRAFFIC, headers=reader)).status_code == 403
    assert (await client.delete(TRAFFIC, headers=writer)).status_code == 204


# --- routing ------------------------------------------------------------------------------------


def fake_target(version: int, model_id: uuid.UUID) -> Target:
    return Target(
        model_id=model_id,
        model_name="m",
        owner_id=model_id,
        version_id=uuid.uuid4(),
        version=version,
        stage="development",
        framework=Framework.SKLEARN,
        format=ModelFormat.SKOPS,
        task_type=None,
        storage_key=f"k{version}",
        sha256="0" * 64,
        feature_names=None,
    )


def split(weights: list[int], *, shadow_rate: float = 0.0) -> Traffic:
    model_id = uuid.uuid4()
    routes = tuple(fake_target(i + 1, model_id) for i in range(len(weights)))
    bounds = tuple(int(b) for b in np.cumsum(weights))
    shadow = fake_target(99, model_id) if shadow_rate else None
    return Traffic(routes=routes, bounds=bounds, shadow=shadow, sample_rate=shadow_rate)


def test_weighted_draws_follow_the_weights(app: FastAPI) -> None:
    predictor = state_of(app).predictor  # seeded by the settings
    traffic = split([90, 10], shadow_rate=0.25)
    draws = [routing.route(traffic, None, predictor.rng) for _ in range(2000)]
    second = sum(1 for target, _ in draws if target.version == 2)
    low, high = binomial_bounds(2000, 0.1)
    assert low <= second <= high, second
    shadowed = sum(1 for _, shadow in draws if shadow is not None)
    low, high = binomial_bounds(2000, 0.25)
    assert low <= shadowed <= high, shadowed


def test_a_zero_weight_route_is_never_chosen(app: FastAPI) -> None:
    predictor = state_of(app).predictor
    traffic = split([0, 5, 0])
    assert {routing.route(traffic, None, predictor.rng)[0].version for _ in range(200)} == {2}
    assert {routing.route(traffic, f"k{i}", predictor.rng)[0].version for i in range(200)} == {2}


def test_routing_keys_are_sticky_and_spread(app: FastAPI) -> None:
    predictor = state_of(app).predictor
    traffic = split([90, 10])
    chosen = {
        f"user-{i}": routing.route(traffic, f"user-{i}", predictor.rng)[0].version
        for i in range(2000)
    }
    for key, version in list(chosen.items())[:100]:
        assert all(
            routing.route(traffic, key, predictor.rng)[0].version == version for _ in range(5)
        )
    low, high = binomial_bounds(2000, 0.1)
    assert low <= Counter(chosen.values())[2] <= high
    # The point depends on the model too: another model's split treats the key on its own.
    assert routing.sticky_point(uuid.uuid4(), "k", 2**62) != routing.sticky_point(
        uuid.uuid4(), "k", 2**62
    )


async def test_requests_without_a_version_follow_the_split(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await two_versions(client, user, iris_skops)
    await put_policy(
        client,
        user,
        {"routes": [{"target": "production", "weight": 90}, {"target": "v2", "weight": 10}]},
    )
    fastapi = handed_to_fastapi(app)
    versions = [await served(client, user, v2=i % 2 == 1) for i in range(400)]
    low, high = binomial_bounds(400, 0.1)
    assert low <= versions.count(2) <= high, versions.count(2)
    assert set(versions) == {1, 2}
    # Once both versions were loaded, the fast path answered (and split) the rest itself.
    assert len(fastapi) <= 4, fastapi
    rows = [r for r in await logged(app) if r.protocol in ("rest", "v2")]
    assert Counter(r.version for r in rows) == Counter(versions)


async def test_a_routing_key_keeps_its_version_on_both_protocols(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await two_versions(client, user, iris_skops)
    await put_policy(
        client, user, {"routes": [{"target": "v1", "weight": 50}, {"target": "v2", "weight": 50}]}
    )
    by_key = {}
    for i in range(30):
        key = f"customer-{i}"
        seen = {await served(client, user, key=key, v2=j % 2 == 1) for j in range(4)}
        assert len(seen) == 1, (key, seen)
        by_key[key] = seen.pop()
    # Different keys spread over both routes.
    assert set(by_key.values()) == {1, 2}


async def test_a_request_naming_a_version_ignores_the_policy(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await two_versions(client, user, iris_skops)
    await client.put(
        "/api/v1/models/iris/aliases/champion", json={"version": 1}, headers=user.headers
    )
    await put_policy(client, user, {"routes": [{"target": "v2", "weight": 1}], "shadow": None})
    for params in ({"version": 1}, {"alias": "champion"}, {"stage": "production"}):
        for _ in range(3):
            answer = await client.post(
                NATIVE, json={"inputs": IRIS_ROWS}, params=params, headers=user.headers
            )
            assert answer.json()["version"] == 1, params
    for _ in range(3):
        answer = await client.post(
            "/v2/models/iris/versions/1/infer", json=V2_BODY, headers=user.headers
        )
        assert answer.json()["model_version"] == "1"
    assert await served(client, user) == 2
    assert await served(client, user, v2=True) == 2


async def test_a_policy_change_applies_to_the_next_request(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await two_versions(client, user, iris_skops)
    # Warm: both versions loaded and the default resolution cached for the fast path.
    assert await served(client, user) == 1
    assert await served(client, user, v2=True) == 1
    await put_policy(client, user, {"routes": [{"target": "v2", "weight": 1}]})
    assert [await served(client, user, v2=i % 2 == 1) for i in range(4)] == [2, 2, 2, 2]
    await put_policy(client, user, {"routes": [{"target": "production", "weight": 1}]})
    assert [await served(client, user, v2=i % 2 == 1) for i in range(4)] == [1, 1, 1, 1]
    await put_policy(client, user, {"routes": [{"target": "v2", "weight": 1}]})
    assert await served(client, user) == 2
    assert (await client.delete(TRAFFIC, headers=user.headers)).status_code == 204
    assert [await served(client, user, v2=i % 2 == 1) for i in range(4)] == [1, 1, 1, 1]


async def test_a_route_that_stops_resolving_is_skipped(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await two_versions(client, user, iris_skops)
    await client.put(
        "/api/v1/models/iris/aliases/challenger", json={"version": 2}, headers=user.headers
    )
    await put_policy(client, user, {"routes": [{"target": "challenger", "weight": 1}]})
    assert await served(client, user) == 2
    deleted = await client.delete("/api/v1/models/iris/aliases/challenger", headers=user.headers)
    assert deleted.status_code == 204
    # No route left: the model's default (production) version serves.
    assert [await served(client, user) for _ in range(3)] == [1, 1, 1]
    shown = (await client.get(TRAFFIC, headers=user.headers)).json()
    assert shown["routes"] == [{"target": "challenger", "weight": 1, "version": None}]


# --- shadows ------------------------------------------------------------------------------------


async def test_a_shadow_never_changes_the_answer_and_is_logged_apart(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path, model_file: Any
) -> None:
    await make_version(client, user, iris_skops)
    await make_version(client, user, model_file("tree_joblib"))
    promoted = await client.patch(
        "/api/v1/models/iris/versions/1/lifecycle",
        json={"stage": "production"},
        headers=user.headers,
    )
    assert promoted.status_code == 200
    rest = {"inputs": IRIS_ROWS}
    before = [
        stable(await client.post(NATIVE, json=rest, headers=user.headers)),
        stable(await client.post(V2, json=V2_BODY, headers=user.headers)),
    ]
    await put_policy(
        client,
        user,
        {
            "routes": [{"target": "production", "weight": 1}],
            "shadow": {"target": "v2", "sample_rate": 1.0},
        },
    )
    fastapi = handed_to_fastapi(app)
    for _ in range(3):  # the first resolves the policy anew; the others take the fast path
        after = [
            stable(await client.post(NATIVE, json=rest, headers=user.headers)),
            stable(await client.post(V2, json=V2_BODY, headers=user.headers)),
        ]
        assert after == before
    assert fastapi == [NATIVE]
    rows = await logged(app)
    primary = [r for r in rows if not r.shadow]
    shadows = [r for r in rows if r.shadow]
    assert len(primary) == 8
    assert {r.version for r in primary} == {1}
    assert len(shadows) == 6
    by_id = {r.id: r for r in primary}
    for row in shadows:
        assert row.version == 2
        assert row.status == "success", row.error
        assert row.inputs is None
        source = primary_of(row, by_id)
        assert row.protocol == source.protocol
        assert row.n_rows == source.n_rows == 2
        mine, theirs = predictions_of(row), predictions_of(source)
        assert row.agreed_rows == sum(a == b for a, b in zip(mine, theirs, strict=True))
        assert row.abs_diff_sum is None
    # The model's analytics count the primary traffic only.
    stats = (await client.get("/api/v1/analytics/models", headers=user.headers)).json()
    assert [(s["version"], s["total_predictions"]) for s in stats] == [(1, 8)]
    # The prediction log tells them apart.
    listed = await client.get(
        "/api/v1/predictions", params={"shadow": "true"}, headers=user.headers
    )
    items = listed.json()["items"]
    assert len(items) == 6
    assert all(item["shadow"] and item["shadow_of"] for item in items)
    listed = await client.get(
        "/api/v1/predictions", params={"shadow": "false"}, headers=user.headers
    )
    assert len(listed.json()["items"]) == 8


async def test_a_failing_shadow_never_fails_the_request(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path, model_file: Any
) -> None:
    await make_version(client, user, iris_skops)
    # A regressor of five features: the iris rows (four) do not fit it.
    await make_version(client, user, model_file("ridge_skops"))
    await put_policy(
        client,
        user,
        {
            "routes": [{"target": "v1", "weight": 1}],
            "shadow": {"target": "v2", "sample_rate": 1.0},
        },
    )
    for _ in range(2):
        assert await served(client, user) == 1
        assert await served(client, user, v2=True) == 1
    rows = await logged(app)
    shadows = [r for r in rows if r.shadow]
    assert [r.status for r in rows if not r.shadow] == ["success"] * 4
    assert len(shadows) == 4
    assert all(r.status == "error" and r.version == 2 for r in shadows)
    assert all("feature" in (r.error or "") for r in shadows), [r.error for r in shadows]
    stats = (await client.get(f"{TRAFFIC}/stats", headers=user.headers)).json()
    assert stats["shadows"] == [
        {
            "version": 2,
            "requests": 4,
            "failures": 4,
            "avg_inference_time_ms": None,
            "p50_inference_time_ms": None,
            "p95_inference_time_ms": None,
            "label_rows": 0,
            "label_agreement": None,
            "value_rows": 0,
            "mean_absolute_difference": None,
        }
    ]


async def test_traffic_stats_compare_routes_and_shadow(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path, model_file: Any
) -> None:
    await make_version(client, user, iris_skops)
    await make_version(client, user, model_file("tree_joblib"))
    await make_version(client, user, model_file("forest_skops"))
    await put_policy(
        client,
        user,
        {
            "routes": [{"target": "v1", "weight": 1}, {"target": "v2", "weight": 1}],
            "shadow": {"target": "v3", "sample_rate": 1.0},
        },
    )
    versions = []
    for i in range(40):
        versions.append(await served(client, user, v2=i % 2 == 1))
        # One at a time: while the shadow loads, copies past the in-flight bound are dropped.
        await state_of(app).predictor.drain_shadows()
    rows = await logged(app)
    stats = await client.get(f"{TRAFFIC}/stats", headers=user.headers)
    assert stats.status_code == 200, stats.text
    body = stats.json()
    by_version = {v["version"]: v for v in body["versions"]}
    assert set(by_version) == {1, 2}
    for number in (1, 2):
        assert by_version[number]["requests"] == versions.count(number)
        assert by_version[number]["failures"] == 0
        assert by_version[number]["targets"] == [f"v{number}"]
        assert by_version[number]["p50_inference_time_ms"] is not None
        assert by_version[number]["p95_inference_time_ms"] is not None
    [shadow] = body["shadows"]
    shadows = [r for r in rows if r.shadow]
    assert shadow["version"] == 3
    assert shadow["requests"] == len(shadows) == 40
    assert shadow["label_rows"] == 80
    agreed = sum(r.agreed_rows or 0 for r in shadows)
    assert shadow["label_agreement"] == pytest.approx(agreed / 80)
    # The shadow's latency percentiles come from its rollups' buckets, like the routes': within
    # the buckets' relative error of the exact ones over its logged times.
    times = sorted(r.inference_time_ms for r in shadows if r.inference_time_ms is not None)
    assert len(times) == 40
    for key, rank in (("p50_inference_time_ms", 20), ("p95_inference_time_ms", 38)):
        exact = times[rank - 1]  # nearest rank: ceil(p * n)
        assert shadow[key] == pytest.approx(exact, rel=rollups.PERCENTILE_RELATIVE_ERROR + 1e-9)
    assert times[0] <= shadow["p50_inference_time_ms"] <= shadow["p95_inference_time_ms"]
    # A window before any of it holds nothing.
    empty = await client.get(
        f"{TRAFFIC}/stats",
        params={"until": "2020-01-01T00:00:00Z"},
        headers=user.headers,
    )
    assert empty.json()["versions"] == []
    assert empty.json()["shadows"] == []


async def test_regressor_shadows_report_the_mean_absolute_difference(
    app: FastAPI, client: httpx.AsyncClient, user: Account, model_file: Any
) -> None:
    await make_version(client, user, model_file("ridge_skops"))
    await make_version(client, user, model_file("gbr_skops"))
    await put_policy(
        client,
        user,
        {
            "routes": [{"target": "v1", "weight": 1}],
            "shadow": {"target": "v2", "sample_rate": 1.0},
        },
    )
    rows_in = [[0.1, 0.2, 0.3, 0.4, 0.5], [1.0, -1.0, 0.5, 0.0, 2.0]]
    for _ in range(3):
        answer = await client.post(NATIVE, json={"inputs": rows_in}, headers=user.headers)
        assert answer.status_code == 200, answer.text
    rows = await logged(app)
    by_id = {r.id: r for r in rows if not r.shadow}
    expected = 0.0
    for row in (r for r in rows if r.shadow):
        mine = np.asarray(predictions_of(row))
        theirs = np.asarray(predictions_of(primary_of(row, by_id)))
        assert row.abs_diff_sum == pytest.approx(float(np.abs(mine - theirs).sum()))
        expected += float(np.abs(mine - theirs).sum())
    body = (await client.get(f"{TRAFFIC}/stats", headers=user.headers)).json()
    [shadow] = body["shadows"]
    assert shadow["value_rows"] == 6
    assert shadow["mean_absolute_difference"] == pytest.approx(expected / 6)
    assert shadow["label_agreement"] is None


async def test_shadow_copies_past_the_bound_are_dropped(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await two_versions(client, user, iris_skops)
    await put_policy(
        client,
        user,
        {
            "routes": [{"target": "v1", "weight": 1}],
            "shadow": {"target": "v2", "sample_rate": 1.0},
        },
    )
    state = state_of(app)
    predictor = state.predictor
    predictor.max_shadows_in_flight = 2
    async with state.sessions() as db:
        caller_user = await db.get(User, uuid.UUID(user.id))
        assert caller_user is not None
        target = await targets.resolve_serving(db, caller_user, "iris")
    assert target.traffic is not None
    assert target.traffic.shadow is not None
    caller = Caller(user=caller_user, api_key_id=None)
    body = b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'

    def dropped() -> float:
        found = predictor.metrics.registry.get_sample_value(
            "modelyard_shadow_predictions_dropped_total"
        )
        return found or 0.0

    before = dropped()
    answers = [
        await rest.predict_rest(
            predictor, target.traffic.routes[0], body, caller=caller, shadow=target.traffic.shadow
        )
        for _ in range(5)
    ]
    # Each answer's task starts its shadow without waiting for it: two fit, three are dropped.
    for answer in answers:
        assert answer.background is not None
        await answer.background()
    assert dropped() - before == 3
    rows = await logged(app)
    assert sum(1 for r in rows if r.shadow) == 2


# --- units --------------------------------------------------------------------------------------


def test_compare_by_label_and_by_value() -> None:
    labels = np.asarray([0, 1, 2, 2])
    assert compare(labels, np.asarray([0, 1, 1, 2]), by_label=True) == (3, None)
    assert compare(
        np.asarray(["a", "b"], dtype=object), np.asarray(["a", "c"], dtype=object), by_label=True
    ) == (1, None)
    assert compare(labels, np.asarray([0, 1]), by_label=True) == (0, None)
    agreed, diff = compare(np.asarray([1.0, 2.0, 3.0]), np.asarray([1.5, 2.0, 1.0]), by_label=False)
    assert agreed is None
    assert diff == pytest.approx(2.5)
    # Multi-output regressors: a row's difference is the mean over its outputs.
    _, diff = compare(
        np.asarray([[1.0, 1.0], [0.0, 0.0]]), np.asarray([[2.0, 3.0], [0.0, 0.0]]), by_label=False
    )
    assert diff == pytest.approx(1.5)


def test_spooled_rows_from_before_shadows_replay() -> None:
    old = {
        "id": str(uuid.uuid4()),
        "model_id": str(uuid.uuid4()),
        "version_id": None,
        "version": None,
        "owner_id": None,
        "user_id": None,
        "api_key_id": None,
        "protocol": "rest",
        "status": "error",
        "error": "x",
        "inputs": None,
        "outputs": None,
        "n_rows": 0,
        "inference_time_ms": None,
        "created_at": "2026-11-29T10:00:00+00:00",
    }
    row = parse_row(old)
    assert row["shadow"] is False
    assert row["shadow_of"] is None
    assert row["agreed_rows"] is None


async def test_refs_parse_as_policies_write_them() -> None:
    assert targets.parse_ref("v12") == targets.VersionRef(version=12)
    assert targets.parse_ref("latest") == targets.VersionRef()
    assert targets.parse_ref("staging") == targets.VersionRef(stage=Stage.STAGING)
    assert targets.parse_ref("champion") == targets.VersionRef(alias="champion")


async def test_another_user_cannot_route_by_naming_the_model(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await two_versions(client, user, iris_skops)
    await put_policy(client, user, {"routes": [{"target": "v2", "weight": 1}]})
    stranger = await make_account(client)
    answer = await client.post(NATIVE, json={"inputs": IRIS_ROWS}, headers=stranger.headers)
    assert answer.status_code == 404
