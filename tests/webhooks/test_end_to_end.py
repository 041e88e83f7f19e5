"""From the registry's HTTP API to a receiver: uploads, lifecycle, aliases and deletions
arrive signed, sent by the app's own worker; webhook changes are in the audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.config import Settings
from tests.support import factories
from tests.support.settings import make_settings
from tests.webhooks.helpers import delivery_log, make_hook, settled_log
from tests.webhooks.receiver import Receiver, verify

MODELS = "/api/v1/models"
EVERY_EVENT = [
    "model_version.created",
    "model_version.stage_changed",
    "alias.changed",
    "model.deleted",
]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # The app's own worker sends (woken as deliveries are queued), to a receiver on loopback.
    return make_settings(tmp_path, database_url, webhook_allow_private_networks=True)


async def test_registry_changes_arrive_signed_at_the_receiver(
    client: httpx.AsyncClient, user: factories.Account, receiver: Receiver, iris_skops: Path
) -> None:
    everything = await make_hook(client, user, f"{receiver.url}/all", EVERY_EVENT)
    version = await factories.make_version(client, user, iris_skops, name="iris")
    [created] = await receiver.wait_for(1)

    promoted = await client.patch(
        f"{MODELS}/iris/versions/1/lifecycle", json={"stage": "staging"}, headers=user.headers
    )
    assert promoted.status_code == 200, promoted.text
    await receiver.wait_for(2)
    aliased = await client.put(
        f"{MODELS}/iris/aliases/champion", json={"version": 1}, headers=user.headers
    )
    assert aliased.status_code == 200, aliased.text
    await receiver.wait_for(3)
    deleted = await client.delete(f"{MODELS}/iris", headers=user.headers)
    assert deleted.status_code == 204, deleted.text
    received = await receiver.wait_for(4)

    for got in received:
        assert got.path == "/all"
        assert verify(everything["secret"], got.headers, got.body)
    bodies: list[dict[str, Any]] = [got.json() for got in received]
    assert [b["type"] for b in bodies] == EVERY_EVENT
    model_id = version["model_id"]
    assert bodies[0]["data"] == {
        "model": "iris",
        "version": 1,
        "framework": "sklearn",
        "stage": "development",
        "format": version["format"],
        "size": version["file_size"],
        "sha256": version["sha256"],
        "model_id": model_id,
        "target_id": version["id"],
    }
    assert bodies[1]["data"] == {
        "model": "iris",
        "version": 1,
        "from": "development",
        "to": "staging",
        "model_id": model_id,
        "target_id": version["id"],
    }
    assert bodies[2]["data"] == {
        "model": "iris",
        "alias": "champion",
        "version": 1,
        "previous": None,
        "model_id": model_id,
        "target_id": f"{model_id}:champion",
    }
    assert bodies[3]["data"] == {"model": "iris", "model_id": model_id, "target_id": model_id}
    logged = await settled_log(client, user, everything["id"])
    assert created.headers["webhook-id"] == logged[-1]["id"]
    assert [d["event_type"] for d in logged] == EVERY_EVENT[::-1]
    assert {d["status"] for d in logged} == {"delivered"}


async def test_another_users_upload_reaches_none_of_my_webhooks(
    client: httpx.AsyncClient,
    user: factories.Account,
    other_user: factories.Account,
    receiver: Receiver,
    iris_skops: Path,
) -> None:
    mine = await make_hook(client, user, f"{receiver.url}/mine", EVERY_EVENT)
    theirs = await make_hook(client, other_user, f"{receiver.url}/theirs", EVERY_EVENT)

    await factories.make_version(client, other_user, iris_skops, name="iris")
    [got] = await receiver.wait_for(1)

    assert got.path == "/theirs"
    assert verify(theirs["secret"], got.headers, got.body)
    assert await delivery_log(client, user, mine["id"]) == []


async def test_webhook_changes_are_in_the_audit_log_without_the_secret(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    hook = await make_hook(client, user, "https://hooks.example.com/x?token=t0ps3cret")
    await client.delete(f"/api/v1/webhooks/{hook['id']}", headers=user.headers)

    response = await client.get("/api/v1/audit?action=webhook.", headers=user.headers)

    assert response.status_code == 200, response.text
    rows = response.json()["items"]
    assert [(r["action"], r["target_id"]) for r in rows] == [
        ("webhook.deleted", hook["id"]),
        ("webhook.created", hook["id"]),
    ]
    assert hook["secret"] not in response.text
    assert "t0ps3cret" not in response.text
