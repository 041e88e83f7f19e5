"""Registration, login, tokens and the caller's own account, through the HTTP API."""

from __future__ import annotations

import httpx

from tests import factories


async def test_register_returns_the_user_without_secrets(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "Ada@Example.com", "password": "s3cret-pass", "full_name": "Ada"},
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
    assert body["is_admin"] is False


async def test_login_then_me(client: httpx.AsyncClient) -> None:
    account = await factories.make_account(client)
    response = await client.get("/api/v1/auth/me", headers=account.headers)
    assert response.status_code == 200
    assert response.json()["email"] == account.email
