"""What an admin is told an account owns: each domain counts its own, for that account only."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from modelyard.accounts.service import OwnedCounts, count_owned
from modelyard.db.tables import ApiKey
from modelyard.db.types import utcnow
from modelyard.state import AppState
from tests.support import factories
from tests.support.factories import Account


async def test_counts_only_the_accounts_own_objects_and_working_keys(
    client: httpx.AsyncClient,
    app: FastAPI,
    user: Account,
    other_user: Account,
    iris_skops: Path,
) -> None:
    await factories.make_version(client, user, iris_skops, name="a")
    await factories.make_version(client, user, iris_skops, name="a")
    await factories.make_version(client, other_user, iris_skops, name="b")
    experiment = await client.post(
        "/api/v1/experiments", json={"name": "run"}, headers=user.headers
    )
    assert experiment.status_code == 201, experiment.text
    for name in ("works", "revoked", "expired"):
        await factories.make_api_key(client, user, name)
    keys = (await client.get("/api/v1/api-keys", headers=user.headers)).json()["items"]
    by_name = {key["name"]: key["id"] for key in keys}
    revoked = await client.delete(f"/api/v1/api-keys/{by_name['revoked']}", headers=user.headers)
    assert revoked.status_code == 204, revoked.text
    state: AppState = app.state.modelyard
    async with state.sessions() as db:
        await db.execute(
            update(ApiKey)
            .where(ApiKey.id == uuid.UUID(by_name["expired"]))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await db.commit()

        counts = await count_owned(db, uuid.UUID(user.id))

    assert counts == OwnedCounts(models=1, versions=2, experiments=1, active_api_keys=1)


async def test_an_account_without_objects_counts_zero_everywhere(
    app: FastAPI, user: Account
) -> None:
    state: AppState = app.state.modelyard
    async with state.sessions() as db:
        counts = await count_owned(db, uuid.UUID(user.id))

    assert counts == OwnedCounts(models=0, versions=0, experiments=0, active_api_keys=0)
