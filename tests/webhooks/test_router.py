"""The webhooks API: create (secret once), list, show, change, delete, rotate, owner only,
strict validation, and the audit actions it records."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelyard.auth.scopes import Scope, route_needs
from modelyard.changes.events import Action
from modelyard.state import AppState
from tests.auth.test_scopes import api_routes
from tests.support import factories
from tests.support.problems import assert_problem
from tests.support.settings import make_settings

HOOKS = "/api/v1/webhooks"
URL = "https://hooks.example.com/modelyard?token=abc"
ALL_EVENTS = [
    "model_version.created",
    "model_version.stage_changed",
    "alias.changed",
    "model.deleted",
]


async def create(
    client: httpx.AsyncClient, account: factories.Account, **body: object
) -> httpx.Response:
    payload: dict[str, object] = {"url": URL, "events": ["model_version.created"], **body}
    return await client.post(HOOKS, json=payload, headers=account.headers)


async def created(client: httpx.AsyncClient, account: factories.Account, **body: object) -> Any:
    response = await create(client, account, **body)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def actions(app: FastAPI) -> list[Action]:
    state: AppState = app.state.modelyard
    seen: list[Action] = []

    async def sink(action: Action) -> None:
        seen.append(action)

    state.events.on_action(sink)
    return seen


@pytest.fixture
async def strict_client(
    tmp_path: Path, database_url: str, engine: object
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app with the default address rule (private networks refused)."""
    settings = make_settings(tmp_path / "strict", database_url, webhook_delivery=False)
    async with factories.serve(settings) as client:
        yield client


async def test_create_answers_the_webhook_and_its_secret_once(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    body = await created(client, user, events=["alias.changed", "model_version.created"])

    assert body["url"] == URL
    assert body["events"] == ["model_version.created", "alias.changed"]  # in the documented order
    assert body["model_id"] is None
    assert body["active"] is True
    secret = body["secret"]
    assert secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) <= 64
    shown = (await client.get(f"{HOOKS}/{body['id']}", headers=user.headers)).json()
    listed = (await client.get(HOOKS, headers=user.headers)).json()
    assert "secret" not in shown
    assert [set(item) for item in listed["items"]] == [set(shown)]
    assert secret not in str(shown) + str(listed)


async def test_every_webhook_gets_its_own_secret(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    first, second = await created(client, user), await created(client, user)

    assert first["secret"] != second["secret"]


async def test_list_is_the_callers_own_newest_first_and_paged(
    client: httpx.AsyncClient, user: factories.Account, other_user: factories.Account
) -> None:
    ids = [(await created(client, user, description=str(i)))["id"] for i in range(3)]
    await created(client, other_user)

    page = (await client.get(f"{HOOKS}?limit=2&offset=0", headers=user.headers)).json()
    rest = (await client.get(f"{HOOKS}?limit=2&offset=2", headers=user.headers)).json()

    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
    assert [h["id"] for h in page["items"] + rest["items"]] == ids[::-1]


async def test_model_is_resolved_by_name_or_id_among_the_callers_models(
    client: httpx.AsyncClient, user: factories.Account, iris_skops: Path
) -> None:
    version = await factories.make_version(client, user, iris_skops, name="iris")

    by_name = await created(client, user, model="iris")
    by_id = await created(client, user, model=version["model_id"])

    assert by_name["model_id"] == by_id["model_id"] == version["model_id"]


async def test_another_users_model_is_unprocessable_as_if_it_did_not_exist(
    client: httpx.AsyncClient,
    user: factories.Account,
    other_user: factories.Account,
    iris_skops: Path,
) -> None:
    version = await factories.make_version(client, other_user, iris_skops, name="iris")

    for ref in ("iris", version["model_id"], "nope"):
        body = assert_problem(await create(client, user, model=ref), 422)
        assert body["detail"] == f"model {ref!r} not found among your models"


async def test_patch_changes_what_it_is_given_and_null_model_means_every_model(
    client: httpx.AsyncClient, user: factories.Account, iris_skops: Path
) -> None:
    await factories.make_version(client, user, iris_skops, name="iris")
    hook = await created(client, user, model="iris", description="ci")

    response = await client.patch(
        f"{HOOKS}/{hook['id']}",
        json={"url": "https://other.example.com/x", "events": ALL_EVENTS, "active": False},
        headers=user.headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["url"], body["events"], body["active"]) == (
        "https://other.example.com/x",
        ALL_EVENTS,
        False,
    )
    assert (body["model_id"], body["description"]) == (hook["model_id"], "ci")  # untouched

    cleared = await client.patch(
        f"{HOOKS}/{hook['id']}", json={"model": None, "description": None}, headers=user.headers
    )
    assert (cleared.json()["model_id"], cleared.json()["description"]) == (None, None)
    shown = (await client.get(f"{HOOKS}/{hook['id']}", headers=user.headers)).json()
    assert shown == cleared.json()


@pytest.mark.parametrize("field", ["url", "events", "active"])
async def test_patch_refuses_null_for_a_required_field(
    client: httpx.AsyncClient, user: factories.Account, field: str
) -> None:
    hook = await created(client, user)

    response = await client.patch(f"{HOOKS}/{hook['id']}", json={field: None}, headers=user.headers)

    assert assert_problem(response, 422)["detail"] == f"{field} cannot be null"


async def test_rotating_the_secret_answers_a_new_one(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    hook = await created(client, user)

    response = await client.post(f"{HOOKS}/{hook['id']}/rotate-secret", headers=user.headers)

    assert response.status_code == 200, response.text
    assert response.json()["secret"].startswith("whsec_")
    assert response.json()["secret"] != hook["secret"]
    assert response.json()["id"] == hook["id"]


async def test_delete_removes_it(client: httpx.AsyncClient, user: factories.Account) -> None:
    hook = await created(client, user)

    assert (await client.delete(f"{HOOKS}/{hook['id']}", headers=user.headers)).status_code == 204

    assert_problem(await client.get(f"{HOOKS}/{hook['id']}", headers=user.headers), 404)
    assert (await client.get(HOOKS, headers=user.headers)).json()["total"] == 0


async def test_another_users_webhook_is_not_found_for_every_route(
    client: httpx.AsyncClient, user: factories.Account, other_user: factories.Account
) -> None:
    hook = await created(client, other_user)
    path = f"{HOOKS}/{hook['id']}"
    missing = f"{HOOKS}/{uuid.uuid4()}"
    delivery = f"/deliveries/{uuid.uuid4()}/redeliver"

    for target in (path, missing):
        answers = [
            await client.get(target, headers=user.headers),
            await client.patch(target, json={"active": False}, headers=user.headers),
            await client.delete(target, headers=user.headers),
            await client.post(f"{target}/rotate-secret", headers=user.headers),
            await client.get(f"{target}/deliveries", headers=user.headers),
            await client.post(target + delivery, headers=user.headers),
        ]
        details = {assert_problem(r, 404)["detail"] for r in answers}
        assert details == {f"webhook '{target.rsplit('/', 1)[1]}' not found"}
    still = (await client.get(path, headers=other_user.headers)).json()
    assert still["active"] is True
    assert (await client.get(HOOKS, headers=user.headers)).json()["total"] == 0


async def test_even_an_admin_cannot_see_another_users_webhook(
    client: httpx.AsyncClient, user: factories.Account, admin: factories.Account
) -> None:
    hook = await created(client, user)

    assert_problem(await client.get(f"{HOOKS}/{hook['id']}", headers=admin.headers), 404)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"url": "https://user:pw@example.com/"}, "url"),
        ({"url": "https://token@example.com/"}, "url"),
        ({"url": "https:///path-only"}, "url"),
        ({"url": "example.com/no-scheme"}, "url"),
        ({"url": "https://example.com/a b"}, "url"),
        ({"url": "https://example.com/\n"}, "url"),
        ({"url": "https://example.com/#frag"}, "url"),
        ({"url": "https://example.com:99999/"}, "url"),
        ({"url": "https://[::1/"}, "url"),
        ({"url": "https://example.com/" + "a" * 2048}, "url"),
        ({"events": []}, "events"),
        ({"events": ["model_version.exploded"]}, "events"),
        ({"events": "model.deleted"}, "events"),
        ({"description": "d" * 501}, "description"),
        ({"secret": "whsec_mine"}, "secret"),
        ({"id": str(uuid.uuid4())}, "id"),
        ({"active": "maybe"}, "active"),
    ],
)
async def test_invalid_bodies_are_unprocessable(
    client: httpx.AsyncClient, user: factories.Account, body: dict[str, object], where: str
) -> None:
    response = await create(client, user, **body)

    problem = assert_problem(response, 422)
    assert where in {str(part) for error in problem["errors"] for part in error["loc"]}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://127.1/hook",
        "http://2130706433/hook",
        "http://localhost:8080/hook",
        "http://hooks.localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.4/hook",
        "http://100.64.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://[::1]/hook",
        "http://[fd00:ec2::254]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fe80::1]/hook",
        "http://[fec0::1]/hook",  # site-local: `ipaddress.is_global` calls it global
        "http://[2002:a00:1::1]/hook",  # 6to4 around 10.0.0.1
        "http://[64:ff9b::7f00:1]/hook",  # NAT64 around 127.0.0.1
        "http://[2001:db8::1]/hook",  # documentation
        "http://198.18.0.1/hook",  # benchmarking
    ],
)
async def test_non_public_addresses_are_refused_at_creation(
    strict_client: httpx.AsyncClient, url: str
) -> None:
    account = await factories.make_account(strict_client)

    response = await create(strict_client, account, url=url)

    detail = assert_problem(response, 422)["detail"]
    assert re.fullmatch(
        r"webhooks may only reach public addresses, and \S+ is (this machine|not a public address) "
        r"\(the server's MODELYARD_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true allows private networks\)",
        detail,
    ), detail
    patched = await strict_client.patch(
        f"{HOOKS}/{(await created(strict_client, account))['id']}",
        json={"url": url},
        headers=account.headers,
    )
    assert_problem(patched, 422)


async def test_public_hosts_are_accepted_without_asking_dns_at_creation(
    strict_client: httpx.AsyncClient,
) -> None:
    account = await factories.make_account(strict_client)

    for url in (
        "https://hooks.example.com/x",
        "http://93.184.215.14:8080/x",
        "https://[2606:4700::1111]/",
    ):
        assert (await create(strict_client, account, url=url)).status_code == 201, url


async def test_private_addresses_are_accepted_when_the_setting_allows_them(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    assert (await create(client, user, url="http://127.0.0.1:9/hook")).status_code == 201


async def test_changes_are_recorded_as_actions_without_the_secret(
    client: httpx.AsyncClient, user: factories.Account, actions: list[Action]
) -> None:
    hook = await created(client, user)
    await client.patch(f"{HOOKS}/{hook['id']}", json={"active": False}, headers=user.headers)
    rotated = (
        await client.post(f"{HOOKS}/{hook['id']}/rotate-secret", headers=user.headers)
    ).json()
    await client.delete(f"{HOOKS}/{hook['id']}", headers=user.headers)

    assert [(a.name, a.target_type, a.target_id) for a in actions] == [
        ("webhook.created", "webhook", hook["id"]),
        ("webhook.updated", "webhook", hook["id"]),
        ("webhook.updated", "webhook", hook["id"]),
        ("webhook.deleted", "webhook", hook["id"]),
    ]
    assert {str(a.owner_id) for a in actions} == {user.id}
    assert actions[0].details == {
        "url": "https://hooks.example.com",  # no path nor query: receivers put secrets there
        "url_sha256": hashlib.sha256(URL.encode()).hexdigest(),
        "events": ["model_version.created"],
        "model_id": None,
        "active": True,
    }
    assert actions[1].details["changed"] == ["active"]
    assert actions[2].details["changed"] == ["secret"]
    for action in actions:
        for secret in (hook["secret"], rotated["secret"]):
            assert secret not in str(action)
            assert secret.removeprefix("whsec_") not in str(action)
        assert "token=abc" not in str(action)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        (
            "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX",
            "https://hooks.slack.com",
        ),
        ("https://discord.com/api/webhooks/1234/SecretTokenPart", "https://discord.com"),
        (
            "https://example.webhook.office.com/webhookb2/SecretGuid@tenant/IncomingWebhook/abc/def",
            "https://example.webhook.office.com",
        ),
        (
            "http://Hooks.Example.com:8443/p/SecretPath?sig=SecretQuery",
            "http://hooks.example.com:8443",
        ),
        ("http://[2606:4700::1111]:8080/SecretPath", "http://[2606:4700::1111]:8080"),
    ],
)
async def test_the_audit_log_keeps_a_webhooks_origin_and_digest_not_its_path(
    client: httpx.AsyncClient, user: factories.Account, url: str, origin: str
) -> None:
    hook = await created(client, user, url=url)
    await client.patch(f"{HOOKS}/{hook['id']}", json={"url": url}, headers=user.headers)
    await client.delete(f"{HOOKS}/{hook['id']}", headers=user.headers)

    response = await client.get(
        "/api/v1/audit", params={"target_id": hook["id"]}, headers=user.headers
    )

    rows = response.json()["items"]
    assert [row["action"] for row in rows] == [
        "webhook.deleted",
        "webhook.updated",
        "webhook.created",
    ]
    for row in rows:
        assert row["details"]["url"] == origin
        assert row["details"]["url_sha256"] == hashlib.sha256(url.encode()).hexdigest()
        assert "Secret" not in json.dumps(row)


async def test_a_read_key_lists_but_cannot_create_and_a_write_key_can(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    read_key = await factories.make_api_key(client, user, scopes=["read"])
    write_key = await factories.make_api_key(client, user, scopes=["write"])
    body = {"url": URL, "events": ["model.deleted"]}

    refused = await client.post(HOOKS, json=body, headers={"X-API-Key": read_key})
    made = await client.post(HOOKS, json=body, headers={"X-API-Key": write_key})
    listed = await client.get(HOOKS, headers={"X-API-Key": read_key})

    assert assert_problem(refused, 403)["detail"] == "this API key lacks the `write` scope"
    assert made.status_code == 201, made.text
    assert listed.json()["total"] == 1


def test_webhook_routes_need_read_to_look_and_write_to_change(app: FastAPI) -> None:
    found = {
        (method, route.path): route_needs([method], route.path_format)
        for route in api_routes(app.router.routes)
        if route.path.startswith(HOOKS)
        for method in route.methods or ()
    }

    assert {key: (needs.scope, needs.model_param) for key, needs in found.items()} == {
        ("POST", HOOKS): (Scope.WRITE, None),
        ("GET", HOOKS): (Scope.READ, None),
        ("GET", HOOKS + "/{webhook_id}"): (Scope.READ, None),
        ("PATCH", HOOKS + "/{webhook_id}"): (Scope.WRITE, None),
        ("DELETE", HOOKS + "/{webhook_id}"): (Scope.WRITE, None),
        ("POST", HOOKS + "/{webhook_id}/rotate-secret"): (Scope.WRITE, None),
        ("GET", HOOKS + "/{webhook_id}/deliveries"): (Scope.READ, None),
        ("POST", HOOKS + "/{webhook_id}/deliveries/{delivery_id}/redeliver"): (Scope.WRITE, None),
    }


async def test_a_key_limited_to_models_may_not_manage_webhooks(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    key = await factories.make_api_key(client, user, scopes=["read", "write"], models=["iris"])

    response = await client.post(
        HOOKS, json={"url": URL, "events": ["model.deleted"]}, headers={"X-API-Key": key}
    )

    assert assert_problem(response, 403)["type"].endswith("/outside-model-limit")
