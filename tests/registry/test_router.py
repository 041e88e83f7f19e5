"""Registry routes: models, versions, lifecycle, aliases, listing, downloads and ownership."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving import legit
from tests.support.factories import Account, make_version, upload_model

API = "/api/v1/models"


async def stage_of(client: httpx.AsyncClient, account: Account, name: str) -> dict[int, str]:
    versions = (await client.get(f"{API}/{name}/versions", headers=account.headers)).json()
    return {v["version"]: v["stage"] for v in versions["items"]}


async def promote(
    client: httpx.AsyncClient, account: Account, name: str, version: int, stage: str
) -> httpx.Response:
    return await client.patch(
        f"{API}/{name}/versions/{version}/lifecycle", json={"stage": stage}, headers=account.headers
    )


async def test_model_resolves_by_name_and_by_id(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    version = await make_version(client, user, iris_skops)
    by_name = await client.get(f"{API}/iris", headers=user.headers)
    by_id = await client.get(f"{API}/{version['model_id']}", headers=user.headers)
    assert by_name.status_code == by_id.status_code == 200
    assert by_name.json() == by_id.json()
    assert by_name.json()["owner_id"] == user.id
    missing = await client.get(f"{API}/nothing", headers=user.headers)
    assert missing.status_code == 404
    assert missing.json()["detail"] == "model 'nothing' not found"


async def test_promotion_deprecates_the_previous_production_version(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    for _ in range(3):
        await make_version(client, user, iris_skops)
    assert (await promote(client, user, "iris", 1, "staging")).json()["stage"] == "staging"
    assert (await promote(client, user, "iris", 1, "production")).status_code == 200
    assert (await promote(client, user, "iris", 2, "production")).status_code == 200
    assert await stage_of(client, user, "iris") == {
        3: "development",
        2: "production",
        1: "deprecated",
    }
    model = (await client.get(f"{API}/iris", headers=user.headers)).json()
    assert model["production_version"] == 2
    # Promoting the production version again changes nothing.
    assert (await promote(client, user, "iris", 2, "production")).json()["stage"] == "production"
    bad = await promote(client, user, "iris", 3, "shipped")
    assert bad.status_code == 422
    missing = await promote(client, user, "iris", 9, "staging")
    assert missing.status_code == 404


async def test_concurrent_promotions_leave_one_production_version(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    n = 6
    for _ in range(n):
        await make_version(client, user, iris_skops)
    responses = await asyncio.gather(
        *(promote(client, user, "iris", v, "production") for v in range(1, n + 1))
    )
    assert all(r.status_code in (200, 409) for r in responses), [r.text for r in responses]
    stages = await stage_of(client, user, "iris")
    assert list(stages.values()).count("production") == 1
    assert set(stages.values()) <= {"production", "deprecated"}


async def test_archiving_a_version_keeps_it_downloadable(
    client: httpx.AsyncClient, user: Account, iris_skops: Path, iris_bytes: bytes
) -> None:
    await make_version(client, user, iris_skops)
    await make_version(client, user, iris_skops)
    assert (await client.delete(f"{API}/iris/versions/2", headers=user.headers)).status_code == 204
    assert await stage_of(client, user, "iris") == {2: "archived", 1: "development"}
    model = (await client.get(f"{API}/iris", headers=user.headers)).json()
    assert model["latest_version"] == 1
    download = await client.get(f"{API}/iris/versions/2/download", headers=user.headers)
    assert download.status_code == 200
    assert download.content == iris_bytes


async def test_deleting_a_model_archives_it_and_its_versions(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    await promote(client, user, "iris", 1, "production")
    assert (await client.delete(f"{API}/iris", headers=user.headers)).status_code == 204
    model = (await client.get(f"{API}/iris", headers=user.headers)).json()
    assert model["status"] == "archived"
    assert model["production_version"] is None
    assert await stage_of(client, user, "iris") == {1: "archived"}
    listed = (await client.get(API, headers=user.headers)).json()
    assert listed["total"] == 0
    with_archived = (
        await client.get(API, params={"include_archived": "true"}, headers=user.headers)
    ).json()
    assert [m["name"] for m in with_archived["items"]] == ["iris"]
    # An archived model takes no new versions and no promotions.
    again = await upload_model(client, user, iris_skops)
    assert again.status_code == 409
    assert (await promote(client, user, "iris", 1, "production")).status_code == 409


async def test_aliases_point_at_one_version_each(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    await make_version(client, user, iris_skops)
    url = f"{API}/iris/aliases/champion"
    first = await client.put(url, json={"version": 1}, headers=user.headers)
    assert first.status_code == 200
    assert first.json()["version"] == 1
    moved = await client.put(url, json={"version": 2}, headers=user.headers)
    assert moved.json()["version"] == 2
    await client.put(f"{API}/iris/aliases/challenger", json={"version": 1}, headers=user.headers)
    model = (await client.get(f"{API}/iris", headers=user.headers)).json()
    assert model["aliases"] == {"challenger": 1, "champion": 2}

    assert (await client.delete(url, headers=user.headers)).status_code == 204
    assert (await client.delete(url, headers=user.headers)).status_code == 404
    model = (await client.get(f"{API}/iris", headers=user.headers)).json()
    assert model["aliases"] == {"challenger": 1}


@pytest.mark.parametrize("alias", ["latest", "v1", "v42", "Champion", "-x", "a" * 65])
async def test_reserved_and_malformed_aliases_are_refused(
    client: httpx.AsyncClient, user: Account, iris_skops: Path, alias: str
) -> None:
    await make_version(client, user, iris_skops)
    response = await client.put(
        f"{API}/iris/aliases/{alias}", json={"version": 1}, headers=user.headers
    )
    assert response.status_code == 422


async def test_alias_needs_an_existing_live_version(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    url = f"{API}/iris/aliases/champion"
    assert (await client.put(url, json={"version": 5}, headers=user.headers)).status_code == 404
    await client.delete(f"{API}/iris/versions/1", headers=user.headers)
    assert (await client.put(url, json={"version": 1}, headers=user.headers)).status_code == 409
    body = await client.put(url, json={"version": 1, "extra": 1}, headers=user.headers)
    assert body.status_code == 422


async def test_patch_model_and_version_fields(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    await make_version(client, user, iris_skops)
    model = await client.patch(
        f"{API}/iris",
        json={"description": "iris classifier", "tags": ["demo"], "task_type": "classification"},
        headers=user.headers,
    )
    assert model.status_code == 200
    assert model.json()["description"] == "iris classifier"
    assert model.json()["tags"] == ["demo"]
    version = await client.patch(
        f"{API}/iris/versions/1",
        json={"metrics": {"f1": 0.9}, "metadata": {"commit": "abc"}, "description": "first"},
        headers=user.headers,
    )
    assert version.status_code == 200
    body = version.json()
    assert (body["metrics"], body["metadata"], body["description"]) == (
        {"f1": 0.9},
        {"commit": "abc"},
        "first",
    )


@pytest.mark.parametrize(
    "body",
    [
        {"version": 3},
        {"sha256": "0" * 64},
        {"stage": "production"},
        {"storage_key": "models/x"},
        {"metrics": {"f1": "x"}},
        {"input_schema": {"features": []}},
    ],
)
async def test_patch_version_refuses_read_only_and_invalid_fields(
    client: httpx.AsyncClient, user: Account, iris_skops: Path, body: dict[str, Any]
) -> None:
    created = await make_version(client, user, iris_skops)
    response = await client.patch(f"{API}/iris/versions/1", json=body, headers=user.headers)
    assert response.status_code == 422
    unchanged = (await client.get(f"{API}/iris/versions/1", headers=user.headers)).json()
    assert unchanged == created


@pytest.mark.parametrize("body", [{"name": "renamed"}, {"owner_id": "x"}, {"status": "active"}])
async def test_patch_model_refuses_read_only_fields(
    client: httpx.AsyncClient, user: Account, iris_skops: Path, body: dict[str, Any]
) -> None:
    await make_version(client, user, iris_skops)
    response = await client.patch(f"{API}/iris", json=body, headers=user.headers)
    assert response.status_code == 422


async def test_list_filters_sorts_and_pages(
    client: httpx.AsyncClient, user: Account, other_user: Account, model_file: legit.ModelFile
) -> None:
    await make_version(client, user, model_file("lr_skops"), name="iris-lr", tags=["tabular"])
    await make_version(client, user, model_file("xgb_regressor_json"), name="house-prices")
    await make_version(client, user, model_file("onnx_classifier"), name="iris_onnx")
    await make_version(client, other_user, model_file("lr_skops"), name="iris-theirs")
    await promote(client, user, "house-prices", 1, "production")
    await client.patch(f"{API}/iris-lr", json={"tags": ["tabular", "demo"]}, headers=user.headers)

    async def names(**params: Any) -> list[str]:
        response = await client.get(API, params=params, headers=user.headers)
        assert response.status_code == 200, response.text
        return [m["name"] for m in response.json()["items"]]

    assert await names(sort="name") == ["house-prices", "iris-lr", "iris_onnx"]
    assert await names(sort="-name") == ["iris_onnx", "iris-lr", "house-prices"]
    assert await names(sort="-created_at") == ["iris_onnx", "house-prices", "iris-lr"]
    assert await names(search="IRIS", sort="name") == ["iris-lr", "iris_onnx"]
    assert await names(search="s_o") == ["iris_onnx"]  # `_` is a character, not a wildcard
    assert await names(stage="production") == ["house-prices"]
    assert await names(framework="onnx") == ["iris_onnx"]
    assert await names(task_type="regression") == ["house-prices"]
    assert await names(tag="demo") == ["iris-lr"]
    page = (
        await client.get(
            API, params={"sort": "name", "limit": 2, "offset": 2}, headers=user.headers
        )
    ).json()
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 2)
    assert [m["name"] for m in page["items"]] == ["iris_onnx"]
    for bad in (
        {"sort": "owner_id"},
        {"sort": "name; drop table"},
        {"stage": "prod"},
        {"limit": 0},
        {"limit": 101},
        {"framework": "torch"},
    ):
        assert (await client.get(API, params=bad, headers=user.headers)).status_code == 422


async def test_version_list_is_newest_first_and_paged(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    for _ in range(3):
        await make_version(client, user, iris_skops)
    page = (
        await client.get(f"{API}/iris/versions", params={"limit": 2}, headers=user.headers)
    ).json()
    assert page["total"] == 3
    assert [v["version"] for v in page["items"]] == [3, 2]
    assert all(v["model_name"] == "iris" for v in page["items"])


async def test_download_answers_not_modified_for_its_etag(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    version = await make_version(client, user, iris_skops)
    url = f"{API}/iris/versions/1/download"
    first = await client.get(url, headers=user.headers)
    assert first.headers["content-disposition"].startswith("attachment;")
    assert "iris-v1.skops" in first.headers["content-disposition"]
    cached = await client.get(url, headers={**user.headers, "If-None-Match": first.headers["etag"]})
    assert cached.status_code == 304
    assert version["sha256"] in first.headers["etag"]


async def test_download_url_works_without_credentials_until_it_expires(
    client: httpx.AsyncClient, user: Account, iris_skops: Path, iris_bytes: bytes
) -> None:
    await make_version(client, user, iris_skops)
    response = await client.get(
        f"{API}/iris/versions/1/download-url", params={"expires_in": 60}, headers=user.headers
    )
    assert response.status_code == 200
    body = response.json()
    assert body["expires_at"]
    fetched = await client.get(body["url"])
    assert fetched.status_code == 200
    assert fetched.content == iris_bytes
    too_long = await client.get(
        f"{API}/iris/versions/1/download-url",
        params={"expires_in": 10**9},
        headers=user.headers,
    )
    assert too_long.status_code == 422


async def test_another_users_model_is_not_found_on_every_route(
    client: httpx.AsyncClient, user: Account, other_user: Account, iris_skops: Path
) -> None:
    version = await make_version(client, user, iris_skops, name="secret-model")
    await client.put(
        f"{API}/secret-model/aliases/champion", json={"version": 1}, headers=user.headers
    )
    for ref in ("secret-model", version["model_id"]):
        base = f"{API}/{ref}"
        attempts = [
            ("GET", base, None),
            ("PATCH", base, {"description": "mine now"}),
            ("DELETE", base, None),
            ("GET", f"{base}/versions", None),
            ("GET", f"{base}/versions/1", None),
            ("PATCH", f"{base}/versions/1", {"description": "x"}),
            ("PATCH", f"{base}/versions/1/lifecycle", {"stage": "production"}),
            ("DELETE", f"{base}/versions/1", None),
            ("PUT", f"{base}/aliases/mine", {"version": 1}),
            ("DELETE", f"{base}/aliases/champion", None),
            ("GET", f"{base}/versions/1/download", None),
            ("GET", f"{base}/versions/1/download-url", None),
        ]
        for method, url, body in attempts:
            response = await client.request(method, url, json=body, headers=other_user.headers)
            assert response.status_code == 404, (method, url, response.text)
    listed = (await client.get(API, headers=other_user.headers)).json()
    assert listed["total"] == 0
    # Nothing changed for the owner.
    model = (await client.get(f"{API}/secret-model", headers=user.headers)).json()
    assert model["status"] == "active"
    assert model["aliases"] == {"champion": 1}
    assert await stage_of(client, user, "secret-model") == {1: "development"}


async def test_a_name_resolves_among_the_callers_own_models(
    client: httpx.AsyncClient, user: Account, other_user: Account, iris_skops: Path
) -> None:
    mine = await make_version(client, user, iris_skops, name="shared-name")
    theirs = await make_version(client, other_user, iris_skops, name="shared-name")
    assert mine["model_id"] != theirs["model_id"]
    got = (await client.get(f"{API}/shared-name", headers=other_user.headers)).json()
    assert got["id"] == theirs["model_id"]


async def test_registry_routes_need_credentials(client: httpx.AsyncClient) -> None:
    for method, url in [
        ("GET", API),
        ("GET", f"{API}/iris"),
        ("PATCH", f"{API}/iris"),
        ("DELETE", f"{API}/iris"),
        ("GET", f"{API}/iris/versions"),
        ("GET", f"{API}/iris/versions/1"),
        ("PATCH", f"{API}/iris/versions/1/lifecycle"),
        ("PUT", f"{API}/iris/aliases/champion"),
        ("GET", f"{API}/iris/versions/1/download"),
        ("GET", f"{API}/iris/versions/1/download-url"),
    ]:
        response = await client.request(method, url)
        assert response.status_code == 401, (method, url)


async def test_admin_may_act_on_any_model_by_id(
    client: httpx.AsyncClient, user: Account, admin: Account, iris_skops: Path
) -> None:
    version = await make_version(client, user, iris_skops)
    response = await client.patch(
        f"{API}/{version['model_id']}", json={"description": "reviewed"}, headers=admin.headers
    )
    assert response.status_code == 200
    # By name, a model resolves among the caller's own models only.
    assert (await client.get(f"{API}/iris", headers=admin.headers)).status_code == 404


@pytest.mark.parametrize(
    "segment",
    ["..%2F..%2Fsecret-model", "%2e%2e%2fsecret-model", "%2Fsecret-model", "secret-model%00"],
)
async def test_encoded_traversal_in_a_model_reference_finds_nothing(
    client: httpx.AsyncClient,
    user: Account,
    other_user: Account,
    iris_skops: Path,
    iris_bytes: bytes,
    segment: str,
) -> None:
    await make_version(client, user, iris_skops, name="secret-model")
    for suffix in ("", "/versions/1", "/versions/1/download"):
        response = await client.get(f"{API}/{segment}{suffix}", headers=other_user.headers)
        assert response.status_code in (404, 422), (segment, suffix, response.text)
        assert "secret-model" not in response.text or response.status_code == 404
        assert response.content != iris_bytes
