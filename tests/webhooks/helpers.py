"""Helpers of the webhook tests: webhooks made through the API, actions recorded as the
registry records them, the delivery log read back."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from modelyard.changes.events import Action
from modelyard.db.tables import RegisteredModel
from modelyard.state import AppState
from tests.support import factories

HOOKS = "/api/v1/webhooks"
WAIT_SECONDS = 30.0  # a bound, not a measurement


def state_of(app: FastAPI) -> AppState:
    state: AppState = app.state.modelyard
    return state


async def make_hook(
    client: httpx.AsyncClient,
    account: factories.Account,
    url: str,
    events: list[str] | None = None,
    **body: object,
) -> dict[str, Any]:
    """Make a webhook through the API; return its answer (with the secret)."""
    payload = {"url": url, "events": events or ["model_version.created"], **body}
    response = await client.post(HOOKS, json=payload, headers=account.headers)
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    return made


async def make_model(app: FastAPI, account: factories.Account, name: str) -> uuid.UUID:
    """Make a registered model row of `account` (no version: webhooks only need the model)."""
    async with state_of(app).sessions() as db:
        model = RegisteredModel(owner_id=uuid.UUID(account.id), name=name)
        db.add(model)
        await db.commit()
        return model.id


def version_created(
    account: factories.Account, model_id: uuid.UUID | None = None, *, model: str = "iris"
) -> Action:
    """The action the registry records for an upload."""
    return Action(
        name="model_version.created",
        target_type="model_version",
        target_id=str(uuid.uuid4()),
        owner_id=uuid.UUID(account.id),
        model_id=model_id or uuid.uuid4(),
        details={"model": model, "version": 1, "framework": "sklearn", "stage": "development"},
    )


async def record(app: FastAPI, action: Action) -> None:
    await state_of(app).events.record(action)


async def delivery_log(
    client: httpx.AsyncClient, account: factories.Account, hook_id: str, **params: int
) -> list[dict[str, Any]]:
    response = await client.get(
        f"{HOOKS}/{hook_id}/deliveries", params=params, headers=account.headers
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def settled_log(
    client: httpx.AsyncClient, account: factories.Account, hook_id: str
) -> list[dict[str, Any]]:
    """Return the delivery log once no delivery is pending: the app's worker records an
    outcome just after the receiver has answered (polls a state; fails past WAIT_SECONDS)."""
    async with asyncio.timeout(WAIT_SECONDS):
        while True:
            log = await delivery_log(client, account, hook_id, limit=100)
            if all(d["status"] != "pending" for d in log):
                return log
            await asyncio.sleep(0.02)
