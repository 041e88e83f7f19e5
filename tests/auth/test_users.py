"""User administration: listing, activation and promotion, admin only."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from modelyard.auth import service as auth_service
from modelyard.auth.schemas import UserAdminUpdate
from modelyard.db.tables import User
from modelyard.errors import Forbidden
from modelyard.state import AppState
from tests.support import factories
from tests.support.problems import assert_problem, assert_unauthorized

USERS = "/api/v1/users"
ME = "/api/v1/auth/me"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
USER_FIELDS = {"id", "email", "full_name", "is_active", "is_admin", "created_at", "updated_at"}


async def patch_user(
    client: httpx.AsyncClient, admin: factories.Account, user_id: str, body: dict[str, object]
) -> httpx.Response:
    return await client.patch(f"{USERS}/{user_id}", json=body, headers=admin.headers)


async def set_active(
    client: httpx.AsyncClient, admin: factories.Account, account: factories.Account, active: bool
) -> None:
    response = await patch_user(client, admin, account.id, {"is_active": active})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == account.id
    assert response.json()["is_active"] is active


async def me(client: httpx.AsyncClient, account: factories.Account) -> dict[str, Any]:
    response = await client.get(ME, headers=account.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_admin_lists_every_user_as_a_page(
    client: httpx.AsyncClient,
    admin: factories.Account,
    user: factories.Account,
    other_user: factories.Account,
) -> None:
    response = await client.get(USERS, headers=admin.headers)
    assert response.status_code == 200
    page = response.json()
    assert set(page) == {"items", "total", "limit", "offset"}
    assert page["total"] == 3
    assert page["limit"] == 20
    assert page["offset"] == 0
    assert {item["id"] for item in page["items"]} == {admin.id, user.id, other_user.id}
    for item in page["items"]:
        assert set(item) == USER_FIELDS


async def test_admin_pages_through_users_with_limit_and_offset(
    client: httpx.AsyncClient,
    admin: factories.Account,
    user: factories.Account,
    other_user: factories.Account,
) -> None:
    everyone = (await client.get(USERS, params={"limit": 100}, headers=admin.headers)).json()

    response = await client.get(USERS, params={"limit": 1, "offset": 1}, headers=admin.headers)

    assert response.status_code == 200
    page = response.json()
    assert page["total"] == 3
    assert page["limit"] == 1
    assert page["offset"] == 1
    assert page["items"] == [everyone["items"][1]]


@pytest.mark.parametrize("limit", [0, 101])
async def test_user_list_limit_out_of_range_is_unprocessable(
    client: httpx.AsyncClient, admin: factories.Account, limit: int
) -> None:
    response = await client.get(USERS, params={"limit": limit}, headers=admin.headers)
    body = assert_problem(response, 422)
    assert ["query", "limit"] in [e["loc"] for e in body["errors"]]


async def test_non_admin_cannot_list_users(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.get(USERS, headers=user.headers)
    assert_problem(response, 403)


async def test_non_admin_cannot_update_users(
    client: httpx.AsyncClient, user: factories.Account, other_user: factories.Account
) -> None:
    promote = await patch_user(client, user, user.id, {"is_admin": True})
    deactivate = await patch_user(client, user, other_user.id, {"is_active": False})

    assert_problem(promote, 403)
    assert_problem(deactivate, 403)
    assert (await me(client, user))["is_admin"] is False
    assert (await me(client, other_user))["is_active"] is True


async def test_deactivated_user_access_token_is_refused(
    client: httpx.AsyncClient, admin: factories.Account, user: factories.Account
) -> None:
    await set_active(client, admin, user, active=False)
    assert_unauthorized(await client.get(ME, headers=user.headers))


async def test_deactivated_user_refresh_token_is_refused(
    client: httpx.AsyncClient, admin: factories.Account, user: factories.Account
) -> None:
    await set_active(client, admin, user, active=False)
    response = await client.post(REFRESH, json={"refresh_token": user.refresh_token})
    assert_unauthorized(response)


async def test_deactivated_user_api_key_is_refused(
    client: httpx.AsyncClient, admin: factories.Account, user: factories.Account
) -> None:
    key = await factories.make_api_key(client, user)
    assert (await client.get(ME, headers={"X-API-Key": key})).status_code == 200

    await set_active(client, admin, user, active=False)

    assert_unauthorized(await client.get(ME, headers={"X-API-Key": key}))


async def test_deactivated_user_cannot_log_in(
    client: httpx.AsyncClient, admin: factories.Account, user: factories.Account
) -> None:
    await set_active(client, admin, user, active=False)
    response = await client.post(LOGIN, json={"email": user.email, "password": user.password})
    assert_unauthorized(response)


async def test_reactivated_user_can_log_in_again(
    client: httpx.AsyncClient, admin: factories.Account, user: factories.Account
) -> None:
    await set_active(client, admin, user, active=False)
    await set_active(client, admin, user, active=True)

    tokens = await factories.login(client, user.email, user.password)

    response = await client.get(ME, headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert response.status_code == 200
    assert response.json()["id"] == user.id
    assert response.json()["is_active"] is True


async def test_promoted_user_can_list_users(
    client: httpx.AsyncClient, admin: factories.Account, user: factories.Account
) -> None:
    assert_problem(await client.get(USERS, headers=user.headers), 403)

    response = await patch_user(client, admin, user.id, {"is_admin": True})

    assert response.status_code == 200
    assert response.json()["is_admin"] is True
    # Rights changed: the tokens issued before are ended; signed in again, the user is admin.
    assert_problem(await client.get(USERS, headers=user.headers), 401)
    tokens = await factories.login(client, user.email, user.password)
    listed = await client.get(USERS, headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert listed.status_code == 200
    assert user.id in {item["id"] for item in listed.json()["items"]}


@pytest.mark.parametrize("body", [{"is_active": False}, {"is_admin": False}])
async def test_admin_cannot_deactivate_or_demote_themself(
    client: httpx.AsyncClient, admin: factories.Account, body: dict[str, object]
) -> None:
    response = await patch_user(client, admin, admin.id, body)

    assert_problem(response, 409)
    state = await me(client, admin)
    assert state["is_active"] is True
    assert state["is_admin"] is True


@pytest.mark.parametrize("field", ["email", "password_hash", "id", "created_at"])
async def test_update_user_with_unknown_or_read_only_field_is_unprocessable(
    client: httpx.AsyncClient, admin: factories.Account, user: factories.Account, field: str
) -> None:
    values = {
        "email": "taken-over@example.com",
        "password_hash": "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
        "id": str(uuid.uuid4()),
        "created_at": "2000-01-01T00:00:00Z",
    }
    response = await patch_user(client, admin, user.id, {field: values[field]})

    body = assert_problem(response, 422)
    assert ["body", field] in [e["loc"] for e in body["errors"]]
    state = await me(client, user)
    assert state["id"] == user.id
    assert state["email"] == user.email
    await factories.login(client, user.email, user.password)


async def test_update_unknown_user_is_not_found(
    client: httpx.AsyncClient, admin: factories.Account
) -> None:
    response = await patch_user(client, admin, str(uuid.uuid4()), {"is_active": False})
    assert_problem(response, 404)


async def test_update_user_with_non_uuid_id_is_unprocessable(
    client: httpx.AsyncClient, admin: factories.Account
) -> None:
    response = await patch_user(client, admin, "not-a-uuid", {"is_active": False})
    body = assert_problem(response, 422)
    assert ["path", "user_id"] in [e["loc"] for e in body["errors"]]


async def test_two_admins_demoting_each_other_leave_one_admin(
    app: FastAPI, client: httpx.AsyncClient, admin: factories.Account
) -> None:
    # Two admins act at once: each request authenticated its admin before either change was
    # committed (the User rows loaded then), and the changes are applied one after the other.
    second = await factories.make_account(client)
    assert (await patch_user(client, admin, second.id, {"is_admin": True})).status_code == 200
    state: AppState = app.state.modelyard
    async with state.sessions() as db:
        first_admin = await db.get_one(User, uuid.UUID(admin.id))
        second_admin = await db.get_one(User, uuid.UUID(second.id))
        db.expunge_all()
    demote = UserAdminUpdate(is_admin=False)

    async with state.sessions() as db:
        await auth_service.update_user(
            db, first_admin, second_admin.id, demote, events=state.events
        )
    async with state.sessions() as db:
        with pytest.raises(Forbidden, match="no longer an active administrator"):
            await auth_service.update_user(
                db, second_admin, first_admin.id, demote, events=state.events
            )
        admins = await db.scalars(select(User.id).where(User.is_admin, User.is_active))

    assert set(admins) == {first_admin.id}
