"""Typed helpers that make accounts and credentials through the real API."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from modelyard.app import create_app
from modelyard.auth import service as auth_service
from modelyard.config import Settings
from modelyard.state import AppState

DEFAULT_PASSWORD = "correct horse battery staple"
# An app's start-up starts the upload probe's process and imports the frameworks in use: on a
# busy machine that outlasts asgi-lifespan's default bound of 5 s. A hang still fails the test.
LIFESPAN_TIMEOUT_SECONDS = 120.0


def lifespan(app: FastAPI) -> LifespanManager:
    """Run `app`'s lifespan (`async with`), bounded generously for a loaded test machine."""
    return LifespanManager(
        app, startup_timeout=LIFESPAN_TIMEOUT_SECONDS, shutdown_timeout=LIFESPAN_TIMEOUT_SECONDS
    )


@dataclass
class Account:
    id: str
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app built from `settings` in its lifespan, with a client for it."""
    app = create_app(settings)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def login(client: httpx.AsyncClient, email: str, password: str) -> dict[str, str]:
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


async def make_account(
    client: httpx.AsyncClient,
    *,
    email: str | None = None,
    password: str = DEFAULT_PASSWORD,
    admin_of: FastAPI | None = None,
) -> Account:
    """Register and log in a user; with `admin_of`, make it an admin of that app first."""
    email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
    if admin_of is not None:
        state: AppState = admin_of.state.modelyard
        async with state.sessions() as db:
            await auth_service.ensure_admin(
                db, email, password, passwords=state.passwords, events=state.events
            )
    else:
        response = await client.post(
            "/api/v1/auth/register", json={"email": email, "password": password}
        )
        assert response.status_code == 201, response.text
    tokens = await login(client, email, password)
    me = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    return Account(
        id=me.json()["id"],
        email=email,
        password=password,
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
    )


async def make_api_key(
    client: httpx.AsyncClient,
    account: Account,
    name: str = "ci",
    *,
    scopes: list[str] | None = None,
    models: list[str] | None = None,
) -> str:
    """Make an API key of `account` (default scopes: the server's)."""
    body: dict[str, object] = {"name": name}
    if scopes is not None:
        body["scopes"] = scopes
    if models is not None:
        body["models"] = models
    response = await client.post("/api/v1/api-keys", json=body, headers=account.headers)
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


async def upload_model(
    client: httpx.AsyncClient,
    account: Account,
    path: Path,
    *,
    name: str = "iris",
    **fields: object,
) -> httpx.Response:
    """Upload `path` as the next version of `name`; JSON-typed fields may be given as objects."""
    data = {"name": name}
    for key, value in fields.items():
        data[key] = value if isinstance(value, str) else json.dumps(value)
    with path.open("rb") as f:
        return await client.post(
            "/api/v1/models/upload",
            data=data,
            files={"file": (path.name, f, "application/octet-stream")},
            headers=account.headers,
        )


async def make_version(
    client: httpx.AsyncClient, account: Account, path: Path, *, name: str = "iris", **fields: object
) -> dict[str, Any]:
    """Upload `path` and return the version it created."""
    response = await upload_model(client, account, path, name=name, **fields)
    assert response.status_code == 201, response.text
    version: dict[str, Any] = response.json()
    return version
