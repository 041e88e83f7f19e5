"""Registration, login, token rotation, logout and the caller's own account, over HTTP."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.db.tables import RefreshToken, User
from tests.support import factories

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/auth/me"


async def test_register_returns_the_user_without_secrets(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER, json={"email": "Ada@Example.com", "password": "s3cret-pass", "full_name": "Ada"}
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {
        "id",
        "email",
        "full_name",
        "is_active",
        "is_admin",
        "created_at",
        "updated_at",
    }
    assert body["email"] == "ada@example.com"
    assert body["full_name"] == "Ada"
    assert (body["is_active"], body["is_admin"]) == (True, False)
    assert body["created_at"].endswith(("+00:00", "Z"))


async def test_register_stores_an_argon2id_hash(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    await client.post(REGISTER, json={"email": "h@example.com", "password": "s3cret-pass"})
    user = await db.scalar(select(User).where(User.email == "h@example.com"))
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert "s3cret-pass" not in user.password_hash


async def test_register_refuses_a_taken_email_in_any_case(client: httpx.AsyncClient) -> None:
    await client.post(REGISTER, json={"email": "dup@example.com", "password": "s3cret-pass"})
    response = await client.post(
        REGISTER, json={"email": "DUP@example.com", "password": "other-pass"}
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "body",
    [
        {"email": "short@example.com", "password": "1234567"},
        {"email": "not-an-email", "password": "s3cret-pass"},
        {"email": "no-password@example.com"},
    ],
    ids=["weak-password", "bad-email", "missing-password"],
)
async def test_register_refuses_invalid_input(
    client: httpx.AsyncClient, body: dict[str, str]
) -> None:
    response = await client.post(REGISTER, json=body)
    assert response.status_code == 422
    assert response.json()["errors"]


@pytest.mark.parametrize("field", ["is_admin", "is_active", "id", "password_hash"])
async def test_register_refuses_mass_assignment(
    client: httpx.AsyncClient, db: AsyncSession, field: str
) -> None:
    value: object = True if field.startswith("is_") else "x"
    response = await client.post(
        REGISTER, json={"email": "mass@example.com", "password": "s3cret-pass", field: value}
    )
    assert response.status_code == 422
    assert await db.scalar(select(User).where(User.email == "mass@example.com")) is None


async def test_login_returns_a_token_pair(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.post(LOGIN, json={"email": user.email, "password": user.password})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    assert body["access_token"] != body["refresh_token"]


async def test_login_accepts_the_oauth2_form_of_the_docs(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.post(LOGIN, data={"username": user.email, "password": user.password})
    assert response.status_code == 200
    me = await client.get(
        ME, headers={"Authorization": f"Bearer {response.json()['access_token']}"}
    )
    assert me.json()["email"] == user.email


async def test_login_is_case_insensitive_on_email(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.post(
        LOGIN, json={"email": user.email.upper(), "password": user.password}
    )
    assert response.status_code == 200


async def test_login_answers_the_same_for_unknown_email_and_wrong_password(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    wrong = await client.post(LOGIN, json={"email": user.email, "password": "wrong-password"})
    unknown = await client.post(
        LOGIN, json={"email": "nobody@example.com", "password": "wrong-password"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.headers["www-authenticate"] == "Bearer"


async def test_login_refuses_other_media_types(client: httpx.AsyncClient) -> None:
    response = await client.post(
        LOGIN, content=b"<login/>", headers={"Content-Type": "application/xml"}
    )
    assert response.status_code == 415


async def test_login_form_without_password_is_a_validation_error(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(LOGIN, data={"username": "a@example.com"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "password"]


async def test_refresh_rotates_the_pair(client: httpx.AsyncClient, user: factories.Account) -> None:
    response = await client.post(REFRESH, json={"refresh_token": user.refresh_token})
    assert response.status_code == 200
    pair = response.json()
    assert pair["refresh_token"] != user.refresh_token
    me = await client.get(ME, headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.status_code == 200


async def test_refresh_token_reuse_revokes_the_whole_family(
    client: httpx.AsyncClient, user: factories.Account, db: AsyncSession
) -> None:
    rotated = (await client.post(REFRESH, json={"refresh_token": user.refresh_token})).json()

    replay = await client.post(REFRESH, json={"refresh_token": user.refresh_token})
    assert replay.status_code == 401

    # The token the legitimate client got from the rotation is dead too.
    after = await client.post(REFRESH, json={"refresh_token": rotated["refresh_token"]})
    assert after.status_code == 401
    rows = (await db.scalars(select(RefreshToken))).all()
    assert rows
    assert all(row.revoked_at is not None for row in rows)


async def test_refresh_reuse_leaves_other_sessions_alone(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    other_session = await factories.login(client, user.email, user.password)
    await client.post(REFRESH, json={"refresh_token": user.refresh_token})
    await client.post(REFRESH, json={"refresh_token": user.refresh_token})  # reuse
    response = await client.post(REFRESH, json={"refresh_token": other_session["refresh_token"]})
    assert response.status_code == 200


async def test_refresh_refuses_unknown_fields(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.post(
        REFRESH, json={"refresh_token": user.refresh_token, "user_id": user.id}
    )
    assert response.status_code == 422


async def test_logout_revokes_the_session(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.post(
        LOGOUT, json={"refresh_token": user.refresh_token}, headers=user.headers
    )
    assert response.status_code == 204
    refreshed = await client.post(REFRESH, json={"refresh_token": user.refresh_token})
    assert refreshed.status_code == 401


async def test_logout_needs_credentials(client: httpx.AsyncClient, user: factories.Account) -> None:
    response = await client.post(LOGOUT, json={"refresh_token": user.refresh_token})
    assert response.status_code == 401


async def test_logout_cannot_end_another_users_session(
    client: httpx.AsyncClient, user: factories.Account, other_user: factories.Account
) -> None:
    response = await client.post(
        LOGOUT, json={"refresh_token": user.refresh_token}, headers=other_user.headers
    )
    assert response.status_code == 401
    refreshed = await client.post(REFRESH, json={"refresh_token": user.refresh_token})
    assert refreshed.status_code == 200


async def test_me_changes_the_full_name(client: httpx.AsyncClient, user: factories.Account) -> None:
    response = await client.patch(ME, json={"full_name": "Grace Hopper"}, headers=user.headers)
    assert response.status_code == 200
    assert response.json()["full_name"] == "Grace Hopper"
    assert (await client.get(ME, headers=user.headers)).json()["full_name"] == "Grace Hopper"


@pytest.mark.parametrize(
    "body",
    [{"is_admin": True}, {"is_active": False}, {"id": "x"}, {"email": "new@example.com"}],
    ids=["is_admin", "is_active", "id", "email"],
)
async def test_me_refuses_read_only_fields(
    client: httpx.AsyncClient, user: factories.Account, body: dict[str, object]
) -> None:
    response = await client.patch(ME, json=body, headers=user.headers)
    assert response.status_code == 422
    assert (await client.get(ME, headers=user.headers)).json()["is_admin"] is False


async def test_password_change_needs_the_current_password(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.patch(ME, json={"password": "brand-new-pass"}, headers=user.headers)
    assert response.status_code == 422
    still = await client.post(LOGIN, json={"email": user.email, "password": user.password})
    assert still.status_code == 200


async def test_password_change_refuses_a_wrong_current_password(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.patch(
        ME,
        json={"password": "brand-new-pass", "current_password": "not-it-at-all"},
        headers=user.headers,
    )
    assert response.status_code == 403
    still = await client.post(LOGIN, json={"email": user.email, "password": user.password})
    assert still.status_code == 200


async def test_password_change_takes_effect_and_revokes_refresh_tokens(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.patch(
        ME,
        json={"password": "brand-new-pass", "current_password": user.password},
        headers=user.headers,
    )
    assert response.status_code == 200
    old = await client.post(LOGIN, json={"email": user.email, "password": user.password})
    assert old.status_code == 401
    new = await client.post(LOGIN, json={"email": user.email, "password": "brand-new-pass"})
    assert new.status_code == 200
    refreshed = await client.post(REFRESH, json={"refresh_token": user.refresh_token})
    assert refreshed.status_code == 401


async def test_openapi_documents_both_credentials(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] == LOGIN
    assert schemes["APIKeyHeader"]["name"] == "X-API-Key"
    login_body = schema["paths"][LOGIN]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-www-form-urlencoded"} <= set(login_body)
