"""API keys: shown once, stored as a hash, usable two ways, revocable and expiring."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.db.tables import ApiKey
from modelyard.state import AppState
from tests.support import factories
from tests.support.problems import assert_problem, assert_unauthorized

KEYS = "/api/v1/api-keys"
ME = "/api/v1/auth/me"
CREATED_FIELDS = {"id", "name", "prefix", "key", "created_at", "expires_at", "scopes", "models"}
LISTED_FIELDS = {
    "id",
    "name",
    "prefix",
    "is_active",
    "created_at",
    "last_used_at",
    "expires_at",
    "scopes",
    "models",
}


async def create_key(
    client: httpx.AsyncClient, account: factories.Account, **body: object
) -> dict[str, Any]:
    response = await client.post(KEYS, json={"name": "ci", **body}, headers=account.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def list_keys(client: httpx.AsyncClient, account: factories.Account) -> dict[str, Any]:
    response = await client.get(KEYS, headers=account.headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def listed_key(
    client: httpx.AsyncClient, account: factories.Account, key_id: str
) -> dict[str, Any]:
    [item] = [k for k in (await list_keys(client, account))["items"] if k["id"] == key_id]
    assert isinstance(item, dict)
    return item


async def me_with_key(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.get(ME, headers={"X-API-Key": key})


async def key_row(db: AsyncSession, key_id: str) -> ApiKey:
    """Read the key's row as the app last committed it."""
    row = await db.scalar(
        select(ApiKey)
        .where(ApiKey.id == uuid.UUID(key_id))
        .execution_options(populate_existing=True)
    )
    await db.commit()
    assert row is not None
    return row


async def set_key_columns(db: AsyncSession, key_id: str, **values: datetime | bool) -> None:
    await db.execute(update(ApiKey).where(ApiKey.id == uuid.UUID(key_id)).values(**values))
    await db.commit()


def future(days: int = 1) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def secret_of(created: dict[str, Any]) -> str:
    """The part of the key after its public prefix."""
    key: str = created["key"]
    prefix: str = created["prefix"]
    assert key.startswith(prefix + "_")
    return key.removeprefix(prefix + "_")


async def test_created_api_key_is_shown_with_its_secret(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.post(KEYS, json={"name": "ci"}, headers=user.headers)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == CREATED_FIELDS
    assert body["name"] == "ci"
    assert body["expires_at"] is None
    assert len(secret_of(body)) >= 32


async def test_listed_api_keys_never_contain_the_key_or_its_hash(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    created = await create_key(client, user)
    response = await client.get(KEYS, headers=user.headers)
    assert response.status_code == 200
    page = response.json()
    assert page["total"] == 1
    [item] = page["items"]
    assert set(item) == LISTED_FIELDS
    assert item["id"] == created["id"]
    assert item["prefix"] == created["prefix"]
    assert item["is_active"] is True
    assert created["key"] not in response.text
    assert secret_of(created) not in response.text
    assert hashlib.sha256(created["key"].encode()).hexdigest() not in response.text


async def test_api_key_authenticates_as_x_api_key_header(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    created = await create_key(client, user)
    response = await client.get(ME, headers={"X-API-Key": created["key"]})
    assert response.status_code == 200
    assert response.json()["id"] == user.id


async def test_api_key_authenticates_as_bearer_token(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    created = await create_key(client, user)
    response = await client.get(ME, headers={"Authorization": f"Bearer {created['key']}"})
    assert response.status_code == 200
    assert response.json()["id"] == user.id


async def test_revoked_api_key_is_refused_at_once(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    created = await create_key(client, user)
    assert (await me_with_key(client, created["key"])).status_code == 200

    response = await client.delete(f"{KEYS}/{created['id']}", headers=user.headers)

    assert response.status_code == 204
    assert response.content == b""
    assert_unauthorized(await me_with_key(client, created["key"]))


async def test_revoked_api_key_is_listed_inactive(
    client: httpx.AsyncClient, db: AsyncSession, user: factories.Account
) -> None:
    created = await create_key(client, user)
    response = await client.delete(f"{KEYS}/{created['id']}", headers=user.headers)
    assert response.status_code == 204

    assert (await listed_key(client, user, created["id"]))["is_active"] is False
    row = await key_row(db, created["id"])
    assert row.is_active is False
    assert row.revoked_at is not None


async def test_another_users_delete_of_my_key_is_not_found(
    client: httpx.AsyncClient, user: factories.Account, other_user: factories.Account
) -> None:
    created = await create_key(client, user)

    response = await client.delete(f"{KEYS}/{created['id']}", headers=other_user.headers)

    assert_problem(response, 404)
    key_response = await me_with_key(client, created["key"])
    assert key_response.status_code == 200
    assert key_response.json()["id"] == user.id
    assert (await listed_key(client, user, created["id"]))["is_active"] is True


async def test_api_key_with_real_prefix_and_wrong_secret_is_refused(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    created = await create_key(client, user)
    forged = f"{created['prefix']}_{secrets.token_urlsafe(32)}"
    assert_unauthorized(await me_with_key(client, forged))


async def test_api_key_with_past_expiry_is_not_created(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    response = await client.post(
        KEYS, json={"name": "ci", "expires_at": past.isoformat()}, headers=user.headers
    )
    assert_problem(response, 422)
    assert (await list_keys(client, user))["total"] == 0


async def forget_credentials(app: FastAPI) -> None:
    """Tell the app's caches about a change made behind its back, straight in the database."""
    state: AppState = app.state.modelyard
    await state.events.credentials_changed()


async def test_a_checked_key_is_remembered_until_something_is_revoked(
    client: httpx.AsyncClient, db: AsyncSession, user: factories.Account
) -> None:
    created = await create_key(client, user)
    assert (await me_with_key(client, created["key"])).status_code == 200
    # A change behind the app's back is not seen at once (the hot path asks no database)...
    await set_key_columns(db, created["id"], is_active=False)
    assert (await me_with_key(client, created["key"])).status_code == 200
    # ...but any revocation through the API makes every worker check again.
    other = await create_key(client, user)
    revoked = await client.delete(f"{KEYS}/{other['id']}", headers=user.headers)
    assert revoked.status_code == 204
    assert_unauthorized(await me_with_key(client, created["key"]))


async def test_expired_api_key_is_refused(
    client: httpx.AsyncClient, db: AsyncSession, user: factories.Account, app: FastAPI
) -> None:
    created = await create_key(client, user, expires_at=future().isoformat())
    assert (await me_with_key(client, created["key"])).status_code == 200

    await set_key_columns(db, created["id"], expires_at=datetime.now(UTC) - timedelta(minutes=1))
    await forget_credentials(app)

    assert_unauthorized(await me_with_key(client, created["key"]))


async def test_expired_api_key_is_listed_inactive(
    client: httpx.AsyncClient, db: AsyncSession, user: factories.Account
) -> None:
    created = await create_key(client, user, expires_at=future().isoformat())
    assert (await listed_key(client, user, created["id"]))["is_active"] is True

    await set_key_columns(db, created["id"], expires_at=datetime.now(UTC) - timedelta(minutes=1))

    assert (await listed_key(client, user, created["id"]))["is_active"] is False


async def test_database_stores_only_the_sha256_of_the_key(
    client: httpx.AsyncClient, db: AsyncSession, user: factories.Account
) -> None:
    created = await create_key(client, user)
    key: str = created["key"]

    row = await key_row(db, created["id"])
    raw = (await db.execute(select(ApiKey.__table__).where(ApiKey.id == row.id))).one()
    await db.commit()

    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert row.key_hash != key
    for value in raw:
        assert key not in str(value)
        assert secret_of(created) not in str(value)


async def test_first_use_of_api_key_sets_last_used_at(
    client: httpx.AsyncClient, db: AsyncSession, user: factories.Account
) -> None:
    created = await create_key(client, user)
    assert (await key_row(db, created["id"])).last_used_at is None
    assert (await listed_key(client, user, created["id"]))["last_used_at"] is None

    assert (await me_with_key(client, created["key"])).status_code == 200

    assert (await key_row(db, created["id"])).last_used_at is not None
    assert (await listed_key(client, user, created["id"]))["last_used_at"] is not None


async def test_second_use_right_after_keeps_last_used_at(
    client: httpx.AsyncClient, db: AsyncSession, user: factories.Account
) -> None:
    created = await create_key(client, user)
    assert (await me_with_key(client, created["key"])).status_code == 200
    first = (await key_row(db, created["id"])).last_used_at
    assert first is not None

    assert (await me_with_key(client, created["key"])).status_code == 200

    assert (await key_row(db, created["id"])).last_used_at == first


async def test_use_after_a_minute_updates_last_used_at(
    client: httpx.AsyncClient, db: AsyncSession, user: factories.Account, app: FastAPI
) -> None:
    created = await create_key(client, user)
    assert (await me_with_key(client, created["key"])).status_code == 200
    first = (await key_row(db, created["id"])).last_used_at
    assert first is not None
    moved = first - timedelta(minutes=2)
    await set_key_columns(db, created["id"], last_used_at=moved)
    await forget_credentials(app)  # as a minute passing would: the checked key is not remembered

    assert (await me_with_key(client, created["key"])).status_code == 200

    last_used_at = (await key_row(db, created["id"])).last_used_at
    assert last_used_at is not None
    assert last_used_at > moved
    assert last_used_at >= first


@pytest.mark.parametrize("field", ["user_id", "is_active", "key_hash", "prefix"])
async def test_api_key_create_with_unknown_or_read_only_field_is_unprocessable(
    client: httpx.AsyncClient,
    user: factories.Account,
    other_user: factories.Account,
    field: str,
) -> None:
    values = {"user_id": other_user.id, "is_active": True, "key_hash": "0" * 64, "prefix": "myd_x"}
    response = await client.post(
        KEYS, json={"name": "ci", field: values[field]}, headers=user.headers
    )
    body = assert_problem(response, 422)
    assert ["body", field] in [e["loc"] for e in body["errors"]]
    assert (await list_keys(client, user))["total"] == 0
    assert (await list_keys(client, other_user))["total"] == 0


async def test_api_key_with_naive_expires_at_is_unprocessable(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.post(
        KEYS, json={"name": "ci", "expires_at": "2999-01-01T00:00:00"}, headers=user.headers
    )
    body = assert_problem(response, 422)
    assert ["body", "expires_at"] in [e["loc"] for e in body["errors"]]
    assert (await list_keys(client, user))["total"] == 0
