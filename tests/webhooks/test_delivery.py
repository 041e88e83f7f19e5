"""Deliveries: queued by registry actions, signed as Standard Webhooks, retried with backoff
on any failure, logged, redelivered. The worker runs at times the tests choose (`run_once`)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from modelyard.app import create_app
from modelyard.changes.events import Action
from modelyard.db.engine import make_engine, make_sessionmaker
from modelyard.db.tables import WebhookDelivery
from modelyard.db.types import utcnow
from modelyard.webhooks.delivery import BACKOFF, MAX_ATTEMPTS, DeliveryWorker
from modelyard.webhooks.outbound import Sender
from tests.support import factories
from tests.support.factories import lifespan
from tests.support.problems import assert_problem
from tests.support.settings import make_settings
from tests.webhooks.helpers import (
    HOOKS,
    delivery_log,
    make_hook,
    make_model,
    record,
    settled_log,
    state_of,
    version_created,
)
from tests.webhooks.receiver import Receiver, Reply, verify


@pytest.fixture
async def worker(app: FastAPI) -> AsyncIterator[DeliveryWorker]:
    sender = Sender(timeout_seconds=30, allow_private_networks=True)
    worker = DeliveryWorker(state_of(app).sessions, sender)
    yield worker
    await worker.aclose()


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


async def test_an_action_is_delivered_to_the_receiver_signed_with_the_secret(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
    worker: DeliveryWorker,
) -> None:
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    action = version_created(user)
    await record(app, action)
    now = utcnow()

    assert await worker.run_once(now) == 1

    [got] = receiver.received
    [logged] = await delivery_log(client, user, hook["id"])
    assert (got.method, got.path) == ("POST", "/hook")
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-id"] == logged["id"]
    assert got.headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert verify(hook["secret"], got.headers, got.body)
    assert not verify(hook["secret"], got.headers, got.body + b" ")  # the check can fail
    body = got.json()
    assert body["type"] == "model_version.created"
    assert datetime.fromisoformat(body["timestamp"]).utcoffset() == timedelta(0)
    assert body["data"] == {
        "model": "iris",
        "version": 1,
        "framework": "sklearn",
        "stage": "development",
        "model_id": str(action.model_id),
        "target_id": action.target_id,
    }
    assert logged["status"] == "delivered"
    assert (logged["attempts"], logged["response_status"], logged["last_error"]) == (1, 200, None)
    assert at(logged["delivered_at"]) == at(logged["last_attempt_at"]) == now
    assert logged["next_attempt_at"] is None  # due only while pending
    assert logged["payload"] == body
    assert await worker.run_once(now + timedelta(days=2)) == 0  # never sent again


async def test_a_failed_attempt_is_retried_after_the_backoff_with_the_same_message_id(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
    worker: DeliveryWorker,
) -> None:
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    receiver.script(Reply(500, body=b"boom"))
    await record(app, version_created(user))
    t0 = utcnow()

    assert await worker.run_once(t0) == 1
    [failed] = await delivery_log(client, user, hook["id"])
    assert (failed["status"], failed["attempts"]) == ("pending", 1)
    assert (failed["response_status"], failed["last_error"]) == (500, "the receiver answered 500")
    assert at(failed["next_attempt_at"]) == t0 + BACKOFF[0]

    assert await worker.run_once(t0 + BACKOFF[0] - timedelta(seconds=1)) == 0  # not due yet
    assert await worker.run_once(t0 + BACKOFF[0]) == 1

    [delivered] = await delivery_log(client, user, hook["id"])
    assert (delivered["status"], delivered["attempts"], delivered["response_status"]) == (
        "delivered",
        2,
        200,
    )
    assert delivered["last_error"] is None
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivered["id"]
    assert first.body == second.body
    assert int(second.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"]) == 5
    assert verify(hook["secret"], second.headers, second.body)


async def test_a_delivery_fails_after_the_last_retry_about_a_day_later(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
    worker: DeliveryWorker,
) -> None:
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    receiver.default = Reply(503)
    await record(app, version_created(user))
    now = utcnow()

    for delay in BACKOFF:
        assert await worker.run_once(now) == 1
        [logged] = await delivery_log(client, user, hook["id"])
        assert logged["status"] == "pending"
        assert at(logged["next_attempt_at"]) == now + delay
        now += delay
    assert await worker.run_once(now) == 1

    [logged] = await delivery_log(client, user, hook["id"])
    assert (logged["status"], logged["attempts"]) == ("failed", MAX_ATTEMPTS)
    assert len(receiver.received) == MAX_ATTEMPTS == 8
    assert timedelta(hours=20) < sum(BACKOFF, timedelta()) < timedelta(hours=36)
    assert await worker.run_once(now + timedelta(days=7)) == 0


async def test_a_redirect_is_not_followed_and_counts_as_a_failed_attempt(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
    worker: DeliveryWorker,
) -> None:
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    receiver.script(Reply(307, headers={"location": f"{receiver.url}/elsewhere"}))
    await record(app, version_created(user))

    assert await worker.run_once(utcnow()) == 1

    assert [r.path for r in receiver.received] == ["/hook"]
    [logged] = await delivery_log(client, user, hook["id"])
    assert (logged["status"], logged["response_status"]) == ("pending", 307)
    assert logged["last_error"] == "redirects are not followed (answered 307)"


async def test_an_attempt_that_takes_too_long_is_cut_at_the_timeout(
    app: FastAPI, client: httpx.AsyncClient, user: factories.Account, receiver: Receiver
) -> None:
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    receiver.script(Reply(hang=True))
    await record(app, version_created(user))
    worker = DeliveryWorker(
        state_of(app).sessions, Sender(timeout_seconds=0.5, allow_private_networks=True)
    )
    try:
        assert await worker.run_once(utcnow()) == 1
    finally:
        await worker.aclose()

    [logged] = await delivery_log(client, user, hook["id"])
    assert (logged["status"], logged["response_status"]) == ("pending", None)
    assert logged["last_error"] == "timed out after 0.5 s"


async def test_only_the_first_64_kib_of_an_endless_answer_are_read(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
    worker: DeliveryWorker,
) -> None:
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    receiver.script(Reply(endless=True))
    await record(app, version_created(user))

    assert await worker.run_once(utcnow()) == 1

    [logged] = await delivery_log(client, user, hook["id"])
    assert (logged["status"], logged["response_status"]) == ("delivered", 200)
    # The receiver would write 1 GiB; what it wrote is what was read plus the sockets' buffers.
    assert receiver.streamed < 32 * 1024**2


async def test_a_receiver_that_refuses_connections_is_a_failed_attempt(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
    worker: DeliveryWorker,
) -> None:
    await receiver.aclose()  # its port now refuses connections
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    await record(app, version_created(user))

    assert await worker.run_once(utcnow()) == 1

    [logged] = await delivery_log(client, user, hook["id"])
    assert (logged["status"], logged["attempts"], logged["response_status"]) == ("pending", 1, None)
    assert logged["last_error"].startswith("ConnectError")


async def test_a_private_address_is_refused_at_delivery_when_the_setting_is_off(
    app: FastAPI, client: httpx.AsyncClient, user: factories.Account, receiver: Receiver
) -> None:
    # Made while private networks were allowed (or by a name that resolves to loopback).
    hook = await make_hook(client, user, f"http://localhost:{receiver.port}/hook")
    await record(app, version_created(user))
    worker = DeliveryWorker(state_of(app).sessions, Sender(timeout_seconds=5))
    try:
        assert await worker.run_once(utcnow()) == 1
    finally:
        await worker.aclose()

    assert receiver.received == []
    assert receiver.connections == 0
    [logged] = await delivery_log(client, user, hook["id"])
    assert logged["status"] == "pending"
    assert logged["last_error"] == "refused: localhost is this machine"


async def test_deliveries_follow_the_event_types_and_the_model_of_each_webhook(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    other_user: factories.Account,
) -> None:
    iris = await make_model(app, user, "iris")
    wine = await make_model(app, user, "wine")
    url = "http://127.0.0.1:9/hook"
    every_model = await make_hook(client, user, url, ["model_version.created"])
    only_iris = await make_hook(
        client, user, url, ["model_version.created", "model.deleted"], model="iris"
    )
    only_wine = await make_hook(client, user, url, ["alias.changed"], model=str(wine))
    inactive = await make_hook(client, user, url, ["model_version.created"], active=False)
    others = await make_hook(client, other_user, url, ["model_version.created", "model.deleted"])

    await record(app, version_created(user, iris, model="iris"))
    await record(app, version_created(user, wine, model="wine"))
    await record(
        app,
        Action(
            name="alias.changed",
            target_type="model",
            target_id=str(wine),
            owner_id=uuid.UUID(user.id),
            model_id=wine,
            details={"model": "wine", "alias": "champion", "version": 1, "previous": None},
        ),
    )
    await record(
        app,
        Action(
            name="model.deleted",
            target_type="model",
            target_id=str(iris),
            owner_id=uuid.UUID(user.id),
            model_id=iris,
            details={"model": "iris"},
        ),
    )
    # Not a webhook event, and a webhook's own change: neither is delivered.
    await record(
        app, Action(name="api_key.revoked", target_type="api_key", owner_id=uuid.UUID(user.id))
    )

    async def seen(
        hook: dict[str, object], account: factories.Account = user
    ) -> list[tuple[str, str]]:
        log = await delivery_log(client, account, str(hook["id"]))
        return [(d["event_type"], d["payload"]["data"]["model"]) for d in reversed(log)]

    assert await seen(every_model) == [
        ("model_version.created", "iris"),
        ("model_version.created", "wine"),
    ]
    assert await seen(only_iris) == [("model_version.created", "iris"), ("model.deleted", "iris")]
    assert await seen(only_wine) == [("alias.changed", "wine")]
    assert await seen(inactive) == []
    assert await seen(others, other_user) == []


async def test_the_delivery_log_is_newest_first_and_paged(
    app: FastAPI, client: httpx.AsyncClient, user: factories.Account
) -> None:
    hook = await make_hook(client, user, "http://127.0.0.1:9/hook")
    actions = [version_created(user) for _ in range(3)]
    for action in actions:
        await record(app, action)

    first = await client.get(f"{HOOKS}/{hook['id']}/deliveries?limit=2", headers=user.headers)
    rest = await delivery_log(client, user, hook["id"], limit=2, offset=2)

    page = first.json()
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
    targets = [d["payload"]["data"]["target_id"] for d in page["items"] + rest]
    assert targets == [a.target_id for a in reversed(actions)]
    assert {(d["status"], d["attempts"], d["webhook_id"]) for d in page["items"] + rest} == {
        ("pending", 0, hook["id"])
    }


async def test_redelivery_sends_a_delivered_message_again_with_the_same_id(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
    worker: DeliveryWorker,
) -> None:
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    await record(app, version_created(user))
    assert await worker.run_once(utcnow()) == 1
    [delivered] = await delivery_log(client, user, hook["id"])

    response = await client.post(
        f"{HOOKS}/{hook['id']}/deliveries/{delivered['id']}/redeliver", headers=user.headers
    )

    assert response.status_code == 202, response.text
    assert (response.json()["status"], response.json()["attempts"]) == ("pending", 0)
    assert await worker.run_once(utcnow()) == 1
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivered["id"]
    [again] = await delivery_log(client, user, hook["id"])
    assert (again["status"], again["attempts"]) == ("delivered", 1)


async def test_a_failed_delivery_can_be_redelivered_with_a_fresh_schedule(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
    worker: DeliveryWorker,
) -> None:
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    await record(app, version_created(user))
    [queued] = await delivery_log(client, user, hook["id"])
    async with state_of(app).sessions() as db:
        await db.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == uuid.UUID(queued["id"]))
            .values(status="failed", attempts=MAX_ATTEMPTS)
        )
        await db.commit()
    assert await worker.run_once(utcnow()) == 0

    path = f"{HOOKS}/{hook['id']}/deliveries/{queued['id']}/redeliver"
    assert (await client.post(path, headers=user.headers)).status_code == 202

    assert await worker.run_once(utcnow()) == 1
    [logged] = await delivery_log(client, user, hook["id"])
    assert (logged["status"], logged["attempts"]) == ("delivered", 1)


async def test_redelivery_of_a_delivery_being_attempted_is_a_conflict(
    app: FastAPI, client: httpx.AsyncClient, user: factories.Account
) -> None:
    hook = await make_hook(client, user, "http://127.0.0.1:9/hook")
    await record(app, version_created(user))
    [queued] = await delivery_log(client, user, hook["id"])
    async with state_of(app).sessions() as db:
        await db.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == uuid.UUID(queued["id"]))
            .values(claimed_until=utcnow() + timedelta(minutes=1))
        )
        await db.commit()

    response = await client.post(
        f"{HOOKS}/{hook['id']}/deliveries/{queued['id']}/redeliver", headers=user.headers
    )

    assert_problem(response, 409)


async def test_redelivery_names_a_delivery_of_that_webhook_only(
    app: FastAPI, client: httpx.AsyncClient, user: factories.Account
) -> None:
    first = await make_hook(client, user, "http://127.0.0.1:9/a")
    second = await make_hook(client, user, "http://127.0.0.1:9/b")
    await record(app, version_created(user))
    [of_first] = await delivery_log(client, user, first["id"])

    for hook_id, delivery_id in ((second["id"], of_first["id"]), (first["id"], str(uuid.uuid4()))):
        response = await client.post(
            f"{HOOKS}/{hook_id}/deliveries/{delivery_id}/redeliver", headers=user.headers
        )
        assert assert_problem(response, 404)["detail"] == f"delivery '{delivery_id}' not found"


async def test_a_rotated_secret_signs_the_next_attempt(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
    worker: DeliveryWorker,
) -> None:
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    receiver.script(Reply(500))
    await record(app, version_created(user))
    now = utcnow()
    assert await worker.run_once(now) == 1

    rotated = await client.post(f"{HOOKS}/{hook['id']}/rotate-secret", headers=user.headers)
    assert await worker.run_once(now + BACKOFF[0]) == 1

    first, second = receiver.received
    assert verify(hook["secret"], first.headers, first.body)
    assert not verify(hook["secret"], second.headers, second.body)
    assert verify(rotated.json()["secret"], second.headers, second.body)


async def test_an_inactive_webhook_fails_what_it_had_pending_without_sending(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
    worker: DeliveryWorker,
) -> None:
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    await record(app, version_created(user))
    await client.patch(f"{HOOKS}/{hook['id']}", json={"active": False}, headers=user.headers)

    assert await worker.run_once(utcnow()) == 1

    assert receiver.received == []
    [logged] = await delivery_log(client, user, hook["id"])
    assert (logged["status"], logged["last_error"]) == ("failed", "the webhook is inactive")


async def test_deleting_a_webhook_deletes_its_deliveries(
    app: FastAPI, client: httpx.AsyncClient, user: factories.Account, worker: DeliveryWorker
) -> None:
    hook = await make_hook(client, user, "http://127.0.0.1:9/hook")
    await record(app, version_created(user))

    await client.delete(f"{HOOKS}/{hook['id']}", headers=user.headers)

    async with state_of(app).sessions() as db:
        left = await db.scalar(select(func.count()).select_from(WebhookDelivery))
    assert left == 0
    assert await worker.run_once(utcnow()) == 0


async def test_two_workers_claiming_at_once_send_each_delivery_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
    database_url: str,
) -> None:
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    for _ in range(24):
        await record(app, version_created(user))
    # Two processes: each its own engine (connections), sender and worker.
    engines = [make_engine(database_url) for _ in range(2)]
    workers = [
        DeliveryWorker(
            make_sessionmaker(engine),
            Sender(timeout_seconds=30, allow_private_networks=True),
            concurrency=5,
        )
        for engine in engines
    ]
    now = utcnow()

    async def drain(worker: DeliveryWorker) -> int:
        total = 0
        while attempted := await worker.run_once(now):
            total += attempted
        return total

    try:
        counts = await asyncio.gather(*(drain(w) for w in workers))
    finally:
        for worker in workers:
            await worker.aclose()
        for engine in engines:
            await engine.dispose()

    sent = Counter(r.headers["webhook-id"] for r in receiver.received)
    assert sum(counts) == 24
    assert len(sent) == 24
    assert set(sent.values()) == {1}
    log = await delivery_log(client, user, hook["id"], limit=100)
    assert {(d["status"], d["attempts"]) for d in log} == {("delivered", 1)}


async def test_the_apps_own_worker_sends_a_recorded_action_at_once(
    tmp_path: Path, database_url: str, engine: object, receiver: Receiver
) -> None:
    settings = make_settings(tmp_path / "live", database_url, webhook_allow_private_networks=True)
    app = create_app(settings)
    async with (
        lifespan(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        assert state_of(app).webhooks is not None
        account = await factories.make_account(client)
        hook = await make_hook(client, account, f"{receiver.url}/hook")
        await record(app, version_created(account))

        [got] = await receiver.wait_for(1)

        assert verify(hook["secret"], got.headers, got.body)
        [logged] = await settled_log(client, account, hook["id"])
        assert logged["id"] == got.headers["webhook-id"]
        assert logged["status"] == "delivered"


async def test_a_serving_replica_runs_no_delivery_worker(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/x.db", role="serving")
    app = create_app(settings)
    async with lifespan(app):
        assert state_of(app).webhooks is None
