"""`/api/v1/experiments`: CRUD, tags, parameters, metric history, ownership."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support.factories import Account

API = "/api/v1/experiments"


async def create(client: httpx.AsyncClient, account: Account, **body: object) -> dict[str, object]:
    body.setdefault("name", f"exp-{uuid.uuid4().hex[:8]}")
    response = await client.post(API, json=body, headers=account.headers)
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


async def test_create_and_read_an_experiment(client: httpx.AsyncClient, user: Account) -> None:
    created = await create(
        client, user, name="lr-sweep", description="C grid", parameters={"C": 0.5}, tags=["iris"]
    )
    assert created["status"] == "running"
    assert created["owner_id"] == user.id
    got = await client.get(f"{API}/{created['id']}", headers=user.headers)
    assert got.status_code == 200
    body = got.json()
    assert body["name"] == "lr-sweep"
    assert body["parameters"] == {"C": 0.5}
    assert body["tags"] == ["iris"]
    assert body["metrics"] == []
    assert body["model_versions"] == []


async def test_experiment_names_are_unique_per_owner(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await create(client, user, name="same")
    again = await client.post(API, json={"name": "same"}, headers=user.headers)
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    await create(client, other_user, name="same")


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "x", "owner_id": str(uuid.uuid4())},
        {"name": "x", "id": str(uuid.uuid4())},
        {"name": "x", "tags": "not-a-list"},
        {"name": "x", "status": "running"},
    ],
)
async def test_create_rejects_invalid_or_read_only_fields(
    client: httpx.AsyncClient, user: Account, body: dict[str, object]
) -> None:
    response = await client.post(API, json=body, headers=user.headers)
    assert response.status_code == 422
    assert response.json()["errors"]


async def test_list_filters_by_search_and_tag_with_paging(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await create(client, user, name="alpha_1", tags=["vision"])
    await create(client, user, name="beta", description="alpha% test", tags=["nlp"])
    await create(client, user, name="gamma", tags=["nlp", "vision"])
    await create(client, other_user, name="alpha_other", tags=["vision"])

    everything = (await client.get(API, headers=user.headers)).json()
    assert everything["total"] == 3
    assert {e["name"] for e in everything["items"]} == {"alpha_1", "beta", "gamma"}

    search = (await client.get(API, params={"search": "ALPHA"}, headers=user.headers)).json()
    assert {e["name"] for e in search["items"]} == {"alpha_1", "beta"}
    # LIKE wildcards in the search are literal characters.
    wildcard = (await client.get(API, params={"search": "a%"}, headers=user.headers)).json()
    assert {e["name"] for e in wildcard["items"]} == {"beta"}
    underscore = (await client.get(API, params={"search": "a_1"}, headers=user.headers)).json()
    assert {e["name"] for e in underscore["items"]} == {"alpha_1"}

    tagged = (await client.get(API, params={"tag": "vision"}, headers=user.headers)).json()
    assert {e["name"] for e in tagged["items"]} == {"alpha_1", "gamma"}

    first = (await client.get(API, params={"limit": 2}, headers=user.headers)).json()
    second = (await client.get(API, params={"limit": 2, "offset": 2}, headers=user.headers)).json()
    assert first["total"] == second["total"] == 3
    names = [e["name"] for e in first["items"] + second["items"]]
    assert sorted(names) == ["alpha_1", "beta", "gamma"]


async def test_patch_changes_fields_and_status(client: httpx.AsyncClient, user: Account) -> None:
    created = await create(client, user, description="old")
    response = await client.patch(
        f"{API}/{created['id']}",
        json={"status": "completed", "parameters": {"lr": 0.1}, "description": None},
        headers=user.headers,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "completed"
    assert body["parameters"] == {"lr": 0.1}
    assert body["description"] is None
    assert body["name"] == created["name"]
    bad = await client.patch(
        f"{API}/{created['id']}", json={"status": "exploded"}, headers=user.headers
    )
    assert bad.status_code == 422


async def test_metric_history_is_ordered_by_step_and_filterable(
    client: httpx.AsyncClient, user: Account
) -> None:
    created = await create(client, user)
    url = f"{API}/{created['id']}/metrics"
    points = [
        {"key": "loss", "value": 0.5, "step": 2},
        {"key": "loss", "value": 0.9, "step": 1},
        {"key": "accuracy", "value": 0.7, "step": 1, "timestamp": "2026-01-02T03:04:05Z"},
        {"key": "loss", "value": 0.3, "step": 3},
    ]
    logged = await client.post(url, json=points, headers=user.headers)
    assert logged.status_code == 201
    assert len(logged.json()) == 4

    loss = (await client.get(url, params={"key": "loss"}, headers=user.headers)).json()
    assert [(m["step"], m["value"]) for m in loss] == [(1, 0.9), (2, 0.5), (3, 0.3)]
    everything = (await client.get(url, headers=user.headers)).json()
    assert [m["key"] for m in everything] == ["accuracy", "loss", "loss", "loss"]
    assert everything[0]["timestamp"].startswith("2026-01-02T03:04:05")

    detail = (await client.get(f"{API}/{created['id']}", headers=user.headers)).json()
    latest = {m["key"]: (m["step"], m["value"]) for m in detail["metrics"]}
    assert latest == {"accuracy": (1, 0.7), "loss": (3, 0.3)}


@pytest.mark.parametrize(
    "points",
    [
        [],
        [{"key": "loss"}],
        [{"key": "", "value": 1.0}],
        [{"key": "loss", "value": 1.0, "step": -1}],
        [{"key": "loss", "value": "high"}],
        {"key": "loss", "value": 1.0},
    ],
)
async def test_metrics_reject_invalid_points(
    client: httpx.AsyncClient, user: Account, points: object
) -> None:
    created = await create(client, user)
    response = await client.post(
        f"{API}/{created['id']}/metrics", json=points, headers=user.headers
    )
    assert response.status_code == 422


async def test_metrics_reject_non_finite_values(client: httpx.AsyncClient, user: Account) -> None:
    created = await create(client, user)
    response = await client.post(
        f"{API}/{created['id']}/metrics",
        content=b'[{"key": "loss", "value": NaN}]',
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    history = await client.get(f"{API}/{created['id']}/metrics", headers=user.headers)
    assert history.json() == []


async def test_delete_removes_the_experiment_and_its_metrics(
    client: httpx.AsyncClient, user: Account
) -> None:
    created = await create(client, user)
    await client.post(
        f"{API}/{created['id']}/metrics", json=[{"key": "a", "value": 1}], headers=user.headers
    )
    assert (await client.delete(f"{API}/{created['id']}", headers=user.headers)).status_code == 204
    assert (await client.get(f"{API}/{created['id']}", headers=user.headers)).status_code == 404
    again = await client.delete(f"{API}/{created['id']}", headers=user.headers)
    assert again.status_code == 404


async def test_another_users_experiment_is_not_found_on_every_route(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    created = await create(client, user, name="private")
    url = f"{API}/{created['id']}"
    attempts = [
        client.get(url, headers=other_user.headers),
        client.patch(url, json={"name": "stolen"}, headers=other_user.headers),
        client.delete(url, headers=other_user.headers),
        client.post(f"{url}/metrics", json=[{"key": "a", "value": 1}], headers=other_user.headers),
        client.get(f"{url}/metrics", headers=other_user.headers),
    ]
    for attempt in attempts:
        response = await attempt
        assert response.status_code == 404, response.text
        assert "private" not in response.text
    listing = (await client.get(API, headers=other_user.headers)).json()
    assert listing["total"] == 0
    unchanged = (await client.get(url, headers=user.headers)).json()
    assert unchanged["name"] == "private"
    assert (await client.get(f"{url}/metrics", headers=user.headers)).json() == []


async def test_experiment_routes_need_credentials(client: httpx.AsyncClient) -> None:
    some = uuid.uuid4()
    for method, url in [
        ("GET", API),
        ("POST", API),
        ("GET", f"{API}/{some}"),
        ("PATCH", f"{API}/{some}"),
        ("DELETE", f"{API}/{some}"),
        ("GET", f"{API}/{some}/metrics"),
        ("POST", f"{API}/{some}/metrics"),
    ]:
        response = await client.request(method, url)
        assert response.status_code == 401, (method, url)
        assert response.headers["www-authenticate"] == "Bearer"


async def test_malformed_experiment_id_is_a_validation_error(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await client.get(f"{API}/not-a-uuid", headers=user.headers)
    assert response.status_code == 422


def nested(depth: int) -> str:
    """A JSON object nested `depth` levels deep."""
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [33, 300, 900])
async def test_deeply_nested_parameters_answer_422(
    client: httpx.AsyncClient, user: Account, depth: int
) -> None:
    body = '{"name": "deep", "parameters": ' + nested(depth) + "}"
    response = await client.post(
        API, content=body, headers={**user.headers, "Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "nested deeper than 32 levels" in response.json()["errors"][0]["msg"]


async def test_parameters_nested_32_levels_are_kept(
    client: httpx.AsyncClient, user: Account
) -> None:
    body = '{"name": "deep", "parameters": ' + nested(31) + "}"
    response = await client.post(
        API, content=body, headers={**user.headers, "Content-Type": "application/json"}
    )

    assert response.status_code == 201, response.text


async def test_huge_parameters_answer_422_on_update(
    client: httpx.AsyncClient, user: Account
) -> None:
    created = await create(client, user)
    response = await client.patch(
        f"{API}/{created['id']}",
        json={"parameters": {f"p{n}": "x" * 1000 for n in range(300)}},
        headers=user.headers,
    )

    assert response.status_code == 422
    assert "larger than 262144 bytes as JSON" in response.json()["errors"][0]["msg"]
