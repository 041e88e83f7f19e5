"""Scoped API keys: read, predict, write and admin, optionally limited to named models; refusals
are 403 naming what the key lacks; password logins keep the user's full rights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from modelyard.auth.deps import current_caller
from modelyard.auth.scopes import Scope, route_needs
from modelyard.observability.scrape import metrics_reader
from tests.support import factories
from tests.support.problems import assert_problem

KEYS = "/api/v1/api-keys"
MODELS = "/api/v1/models"
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
V2_BODY = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": IRIS_ROWS}]}

# Routes under /api/v1 and /v2 that take no credential at all.
PUBLIC_ROUTES = {
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    # Single sign-on: whether it is on, and the command line's one-time code (with its PKCE
    # verifier) spent for tokens: the code is the credential.
    ("GET", "/api/v1/auth/sso"),
    ("POST", "/api/v1/auth/sso/token"),
    ("GET", "/api/v1/artifacts/signed/{key:path}"),  # the signature is the credential
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
}


def key_headers(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def create(
    client: httpx.AsyncClient, account: factories.Account, **body: object
) -> httpx.Response:
    return await client.post(KEYS, json={"name": "scoped", **body}, headers=account.headers)


async def upload(
    client: httpx.AsyncClient, headers: dict[str, str], path: Path, name: str = "iris"
) -> httpx.Response:
    with path.open("rb") as f:
        return await client.post(
            f"{MODELS}/upload", data={"name": name}, files={"file": (path.name, f)}, headers=headers
        )


async def predict(
    client: httpx.AsyncClient, headers: dict[str, str], model: str = "iris"
) -> httpx.Response:
    return await client.post(
        f"/api/v1/predict/{model}", json={"inputs": IRIS_ROWS}, headers=headers
    )


async def infer(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/v2/models/iris/infer", json=V2_BODY, headers=headers)


async def promote(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.patch(
        f"{MODELS}/iris/versions/1/lifecycle", json={"stage": "production"}, headers=headers
    )


def assert_missing(response: httpx.Response, scope: str) -> None:
    body = assert_problem(response, 403)
    assert body["detail"] == f"this API key lacks the `{scope}` scope"
    assert body["type"].endswith("/missing-scope")


def assert_outside_limit(response: httpx.Response) -> None:
    body = assert_problem(response, 403)
    assert body["type"].endswith("/outside-model-limit")
    assert body["detail"] == "this API key is limited to the models 'iris'"


# --- making keys -------------------------------------------------------------------------------


async def test_a_key_made_without_scopes_may_read_and_predict_on_every_model(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await create(client, user)

    assert response.status_code == 201, response.text
    assert response.json()["scopes"] == ["read", "predict"]
    assert response.json()["models"] is None
    [listed] = (await client.get(KEYS, headers=user.headers)).json()["items"]
    assert (listed["scopes"], listed["models"]) == (["read", "predict"], None)


async def test_scopes_and_models_are_stored_in_order_without_repeats(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await create(
        client, user, scopes=["write", "read", "write"], models=["wine", "iris", "iris"]
    )

    assert response.status_code == 201, response.text
    assert (response.json()["scopes"], response.json()["models"]) == (
        ["read", "write"],
        ["iris", "wine"],
    )
    [listed] = (await client.get(KEYS, headers=user.headers)).json()["items"]
    assert (listed["scopes"], listed["models"]) == (["read", "write"], ["iris", "wine"])


async def test_an_unknown_or_empty_scope_list_is_refused(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    for scopes in (["read", "delete"], [], "read"):
        response = await create(client, user, scopes=scopes)
        assert_problem(response, 422)
    assert_problem(await create(client, user, models=[]), 422)
    assert (await client.get(KEYS, headers=user.headers)).json()["total"] == 0


async def test_only_an_admin_may_mint_an_admin_key(
    client: httpx.AsyncClient, user: factories.Account, admin: factories.Account
) -> None:
    refused = await create(client, user, scopes=["read", "admin"])
    body = assert_problem(refused, 403)
    assert "admin" in body["detail"]
    assert (await client.get(KEYS, headers=user.headers)).json()["total"] == 0

    minted = await create(client, admin, scopes=["admin"])
    assert minted.status_code == 201, minted.text
    assert minted.json()["scopes"] == ["admin"]


async def test_a_key_still_cannot_mint_keys_whatever_its_scopes(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    key = await factories.make_api_key(client, user, scopes=["read", "predict", "write"])

    response = await client.post(KEYS, json={"name": "minted"}, headers=key_headers(key))

    assert_problem(response, 403)


# --- what a key may do ---------------------------------------------------------------------------


async def test_a_predict_key_predicts_but_may_neither_write_nor_read(
    client: httpx.AsyncClient, user: factories.Account, iris_skops: Path
) -> None:
    await factories.make_version(client, user, iris_skops)
    headers = key_headers(await factories.make_api_key(client, user, scopes=["predict"]))

    for _ in range(2):  # cold, then from the caches
        assert (await predict(client, headers)).status_code == 200
        assert (await infer(client, headers)).status_code == 200
    assert (await client.get("/v2/models/iris", headers=headers)).status_code == 200
    assert_missing(await upload(client, headers, iris_skops), "write")
    assert_missing(await promote(client, headers), "write")
    assert_missing(await client.delete(f"{MODELS}/iris", headers=headers), "write")
    assert_missing(await client.get(MODELS, headers=headers), "read")
    assert_missing(await client.get(f"{MODELS}/iris", headers=headers), "read")
    assert_missing(await client.get("/api/v1/auth/me", headers=headers), "read")
    # Nothing changed.
    version = (await client.get(f"{MODELS}/iris/versions/1", headers=user.headers)).json()
    assert version["stage"] == "development"


async def test_a_read_key_reads_but_may_not_predict(
    client: httpx.AsyncClient, user: factories.Account, iris_skops: Path
) -> None:
    await factories.make_version(client, user, iris_skops)
    headers = key_headers(await factories.make_api_key(client, user, scopes=["read"]))

    assert (await client.get(f"{MODELS}/iris", headers=headers)).status_code == 200
    for _ in range(2):
        assert_missing(await predict(client, headers), "predict")
        refused = await infer(client, headers)
        assert refused.status_code == 403
        assert refused.json() == {"error": "this API key lacks the `predict` scope"}
    assert_missing(await promote(client, headers), "write")


async def test_a_write_key_uploads_and_promotes(
    client: httpx.AsyncClient, user: factories.Account, iris_skops: Path
) -> None:
    headers = key_headers(await factories.make_api_key(client, user, scopes=["write"]))

    assert (await upload(client, headers, iris_skops)).status_code == 201
    assert (await promote(client, headers)).status_code == 200
    assert_missing(await predict(client, headers), "predict")


async def test_a_key_with_the_scopes_keys_had_before_scopes_does_all_it_did(
    client: httpx.AsyncClient, user: factories.Account, iris_skops: Path
) -> None:
    # What the migration gives every existing key of a non-admin.
    headers = key_headers(
        await factories.make_api_key(client, user, scopes=["read", "predict", "write"])
    )

    assert (await upload(client, headers, iris_skops)).status_code == 201
    assert (await promote(client, headers)).status_code == 200
    assert (await predict(client, headers)).status_code == 200
    assert (await client.get(MODELS, headers=headers)).json()["total"] == 1
    assert (await client.get("/api/v1/experiments", headers=headers)).status_code == 200


async def test_admin_routes_need_the_admin_scope_even_for_an_admins_key(
    client: httpx.AsyncClient, admin: factories.Account
) -> None:
    plain = key_headers(
        await factories.make_api_key(client, admin, scopes=["read", "predict", "write"])
    )
    powerful = key_headers(await factories.make_api_key(client, admin, scopes=["admin"]))

    assert_missing(await client.get("/api/v1/users", headers=plain), "admin")
    assert_missing(await client.get("/metrics", headers=plain), "admin")
    assert (await client.get("/api/v1/users", headers=powerful)).status_code == 200
    assert (await client.get("/metrics", headers=powerful)).status_code == 200


async def test_password_logins_keep_the_users_full_rights(
    client: httpx.AsyncClient, admin: factories.Account, iris_skops: Path
) -> None:
    assert (await upload(client, admin.headers, iris_skops)).status_code == 201
    assert (await promote(client, admin.headers)).status_code == 200
    assert (await predict(client, admin.headers)).status_code == 200
    assert (await infer(client, admin.headers)).status_code == 200
    assert (await client.get(MODELS, headers=admin.headers)).status_code == 200
    assert (await client.get("/api/v1/users", headers=admin.headers)).status_code == 200


# --- model limits --------------------------------------------------------------------------------


async def test_a_key_limited_to_a_model_may_not_touch_another(
    client: httpx.AsyncClient, user: factories.Account, iris_skops: Path
) -> None:
    iris = await factories.make_version(client, user, iris_skops)
    wine = await factories.make_version(client, user, iris_skops, name="wine")
    headers = key_headers(
        await factories.make_api_key(
            client, user, scopes=["read", "predict", "write"], models=["iris"]
        )
    )

    for _ in range(2):
        assert (await predict(client, headers)).status_code == 200
        assert (await predict(client, headers, iris["model_id"])).status_code == 200
        assert_outside_limit(await predict(client, headers, "wine"))
        assert_outside_limit(await predict(client, headers, wine["model_id"]))
    assert (await client.get(f"{MODELS}/iris", headers=headers)).status_code == 200
    assert (await client.get(f"{MODELS}/{iris['model_id']}", headers=headers)).status_code == 200
    assert_outside_limit(await client.get(f"{MODELS}/wine", headers=headers))
    assert_outside_limit(await client.get(f"{MODELS}/{wine['model_id']}", headers=headers))
    refused = await client.post("/v2/models/wine/infer", json=V2_BODY, headers=headers)
    assert refused.status_code == 403
    assert refused.json() == {"error": "this API key is limited to the models 'iris'"}
    # Lists are refused, not filtered: they are not one of its models.
    assert_outside_limit(await client.get(MODELS, headers=headers))
    assert_outside_limit(await client.get("/api/v1/predictions", headers=headers))
    # Uploads are checked on the form's name.
    assert_outside_limit(await upload(client, headers, iris_skops, name="wine"))
    assert (await upload(client, headers, iris_skops)).status_code == 201
    versions = (await client.get(f"{MODELS}/wine/versions", headers=user.headers)).json()
    assert versions["total"] == 1


async def test_a_model_limit_never_reaches_another_users_model_of_that_name(
    client: httpx.AsyncClient,
    user: factories.Account,
    other_user: factories.Account,
    iris_skops: Path,
) -> None:
    theirs = await factories.make_version(client, other_user, iris_skops)
    headers = key_headers(await factories.make_api_key(client, user, models=["iris"]))

    assert_problem(await predict(client, headers), 404)
    assert_outside_limit(await client.get(f"{MODELS}/{theirs['model_id']}", headers=headers))


async def test_an_admin_key_limited_to_a_model_is_limited_to_its_own_model_of_that_name(
    client: httpx.AsyncClient,
    admin: factories.Account,
    user: factories.Account,
    iris_skops: Path,
) -> None:
    theirs = await factories.make_version(client, user, iris_skops)
    await factories.make_version(client, admin, iris_skops)
    await client.post(
        "/api/v1/files/upload",
        files={"file": ("in.csv", b"a,b,c,d\n5.1,3.5,1.4,0.2\n", "text/csv")},
        headers=admin.headers,
    )
    headers = key_headers(
        await factories.make_api_key(
            client, admin, scopes=["read", "predict", "write", "admin"], models=["iris"]
        )
    )
    job = {"model": theirs["model_id"], "input_path": "in.csv", "output_path": "out.csv"}

    for _ in range(2):  # cold, then from the caches
        assert (await predict(client, headers)).status_code == 200  # its own `iris`
        assert_outside_limit(await predict(client, headers, theirs["model_id"]))
    v2 = await client.post(f"/v2/models/{theirs['model_id']}/infer", json=V2_BODY, headers=headers)
    assert v2.status_code == 403
    assert_outside_limit(await client.get(f"{MODELS}/{theirs['model_id']}", headers=headers))
    # A batch job names its model in the body.
    assert_outside_limit(await client.post("/api/v1/batch-jobs", json=job, headers=headers))


# --- every route is covered ----------------------------------------------------------------------


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every APIRoute of the app, through the routers it includes."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:
            yield from api_routes(router.routes)


def calls(dependant: Dependant) -> Iterator[object]:
    yield dependant.call
    for sub in dependant.dependencies:
        yield from calls(sub)


def test_every_api_route_checks_the_scope_it_needs(app: FastAPI) -> None:
    routes = {
        (method, route.path): route
        for route in api_routes(app.router.routes)
        if route.path.startswith(("/api/v1", "/v2", "/metrics"))
        for method in route.methods or ()
    }
    assert len(routes) > 40
    for (method, path), route in routes.items():
        if (method, path) in PUBLIC_ROUTES:
            continue
        # `current_caller` checks the scope of every route that depends on it.
        found = set(calls(route.dependant))
        assert current_caller in found or metrics_reader in found, (method, path)
        assert route_needs(route.methods or (), route.path_format).scope in Scope
    assert set(PUBLIC_ROUTES) <= set(routes)


def test_scopes_follow_from_the_route() -> None:
    expected = {
        ("GET", "/api/v1/models/{model}"): (Scope.READ, "model"),
        ("GET", "/api/v1/models"): (Scope.READ, None),
        ("POST", "/api/v1/models/upload"): (Scope.WRITE, None),
        ("PATCH", "/api/v1/models/{model}/versions/{version}/lifecycle"): (Scope.WRITE, "model"),
        ("PUT", "/api/v1/models/{model}/aliases/{alias}"): (Scope.WRITE, "model"),
        ("PUT", "/api/v1/models/{model}/versions/{version}/reference"): (Scope.WRITE, "model"),
        ("DELETE", "/api/v1/models/{model}/versions/{version}/reference"): (Scope.WRITE, "model"),
        ("GET", "/api/v1/models/{model}/versions/{version}/reference"): (Scope.READ, "model"),
        ("GET", "/api/v1/models/{model}/drift"): (Scope.READ, "model"),
        ("POST", "/api/v1/files/upload"): (Scope.WRITE, None),
        ("POST", "/api/v1/experiments"): (Scope.WRITE, None),
        ("POST", "/api/v1/predict/{model}"): (Scope.PREDICT, "model"),
        ("POST", "/v2/models/{name}/infer"): (Scope.PREDICT, "name"),
        ("POST", "/v2/models/{name}/versions/{version}/infer"): (Scope.PREDICT, "name"),
        ("GET", "/v2/models/{name}/ready"): (Scope.PREDICT, "name"),
        ("GET", "/api/v1/users"): (Scope.ADMIN, None),
        ("PATCH", "/api/v1/users/{user_id}"): (Scope.ADMIN, None),
        ("GET", "/metrics"): (Scope.ADMIN, None),
    }
    for (method, path), (scope, param) in expected.items():
        needs = route_needs([method], path)
        assert (needs.scope, needs.model_param) == (scope, param), (method, path)
    assert route_needs(["POST"], "/api/v1/models/upload").model_in_body
