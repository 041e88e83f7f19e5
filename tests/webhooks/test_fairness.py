"""What one account's webhooks may cost the others: a cap on webhooks per account, deliveries
taken fairly between accounts (a receiver that never answers delays its own account only), and
finished deliveries deleted after their retention."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from modelyard.db.tables import Webhook, WebhookDelivery
from modelyard.db.types import utcnow
from modelyard.webhooks.delivery import DeliveryWorker
from modelyard.webhooks.outbound import Sender
from tests.support import factories
from tests.support.problems import assert_problem
from tests.support.settings import make_settings
from tests.webhooks.helpers import (
    HOOKS,
    WAIT_SECONDS,
    delivery_log,
    make_hook,
    record,
    settled_log,
    state_of,
    version_created,
)
from tests.webhooks.receiver import Receiver, Reply

LIMIT = 3
RETENTION = timedelta(days=30)


@pytest.fixture
async def capped(
    tmp_path: Path, database_url: str, engine: object
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app that lets an account have `LIMIT` webhooks."""
    settings = make_settings(
        tmp_path / "capped",
        database_url,
        webhook_delivery=False,
        webhook_allow_private_networks=True,
        webhook_max_per_account=LIMIT,
    )
    async with factories.serve(settings) as client:
        yield client


@pytest.fixture
async def silent() -> AsyncIterator[Receiver]:
    """A receiver that takes every request and never answers it."""
    server = Receiver()
    server.default = Reply(hang=True)
    await server.start()
    yield server
    await server.aclose()


def worker_of(app: FastAPI, **options: object) -> DeliveryWorker:
    sender = Sender(timeout_seconds=120, allow_private_networks=True)
    return DeliveryWorker(state_of(app).sessions, sender, **options)  # type: ignore[arg-type]


async def create(
    client: httpx.AsyncClient, account: factories.Account, url: str = "http://127.0.0.1:9/"
) -> httpx.Response:
    body = {"url": url, "events": ["model_version.created"]}
    return await client.post(HOOKS, json=body, headers=account.headers)


async def deliveries_of(app: FastAPI, account: factories.Account) -> list[WebhookDelivery]:
    async with state_of(app).sessions() as db:
        rows = await db.scalars(
            select(WebhookDelivery)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(Webhook.user_id == uuid.UUID(account.id))
            .order_by(WebhookDelivery.next_attempt_at)
        )
        return list(rows)


async def count_deliveries(app: FastAPI) -> int:
    async with state_of(app).sessions() as db:
        return int(await db.scalar(select(func.count()).select_from(WebhookDelivery)) or 0)


# --- a cap on webhooks per account ----------------------------------------------------------


async def test_an_account_past_its_webhook_limit_is_refused_with_403(
    capped: httpx.AsyncClient,
) -> None:
    account = await factories.make_account(capped)
    other = await factories.make_account(capped)
    made = [await create(capped, account) for _ in range(LIMIT)]
    assert [r.status_code for r in made] == [201] * LIMIT

    refused = await create(capped, account)

    body = assert_problem(refused, 403)
    assert body["type"] == "https://modelyard.dev/problems/webhook-limit"
    assert body["detail"] == (
        f"an account may have at most {LIMIT} webhooks; delete one to make another"
    )
    listed = await capped.get(HOOKS, headers=account.headers)
    assert listed.json()["total"] == LIMIT
    # Another account has a limit of its own; a deleted webhook frees a place.
    assert (await create(capped, other)).status_code == 201
    gone = await capped.delete(f"{HOOKS}/{made[0].json()['id']}", headers=account.headers)
    assert gone.status_code == 204
    assert (await create(capped, account)).status_code == 201


async def test_concurrent_creations_never_pass_the_webhook_limit(
    capped: httpx.AsyncClient,
) -> None:
    account = await factories.make_account(capped)

    answers = await asyncio.gather(*(create(capped, account) for _ in range(3 * LIMIT)))

    assert Counter(r.status_code for r in answers) == {201: LIMIT, 403: 2 * LIMIT}
    listed = await capped.get(HOOKS, headers=account.headers)
    assert listed.json()["total"] == LIMIT


# --- fair delivery --------------------------------------------------------------------------


async def test_a_receiver_that_never_answers_delays_only_its_own_accounts_deliveries(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    other_user: factories.Account,
    receiver: Receiver,
    silent: Receiver,
) -> None:
    # The attacker: 30 deliveries to a receiver that never answers, queued first, and being
    # attempted when the other account's delivery is queued.
    for n in range(3):
        await make_hook(client, user, f"{silent.url}/{n}")
    for _ in range(10):
        await record(app, version_created(user))
    hook = await make_hook(client, other_user, f"{receiver.url}/hook")
    worker = worker_of(app, concurrency=5, account_concurrency=2)

    worker.start()
    try:
        await silent.wait_for(2)
        await record(app, version_created(other_user))
        worker.wake()  # as the app's action feed does

        [got] = await receiver.wait_for(1)
        [logged] = await settled_log(client, other_user, hook["id"])

        assert (logged["status"], logged["id"]) == ("delivered", got.headers["webhook-id"])
        # The attacker's account holds its own two places, and no more.
        assert len(silent.received) == 2
        rows = await deliveries_of(app, user)
        now = utcnow()
        in_flight = [r for r in rows if r.claimed_until is not None and r.claimed_until > now]
        assert (len(rows), len(in_flight)) == (30, 2)
        assert {r.status for r in rows} == {"pending"}
    finally:
        await worker.aclose()


async def test_a_claim_takes_every_accounts_oldest_delivery_before_anyones_second(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    other_user: factories.Account,
    receiver: Receiver,
) -> None:
    third = await factories.make_account(client)
    for account, path in ((user, "first"), (other_user, "second"), (third, "third")):
        await make_hook(client, account, f"{receiver.url}/{path}")
    for _ in range(6):
        await record(app, version_created(user))  # the oldest six
    await record(app, version_created(other_user))
    await record(app, version_created(third))
    worker = worker_of(app, concurrency=4, account_concurrency=10)
    try:
        assert await worker.run_once(utcnow()) == 4
    finally:
        await worker.aclose()

    assert Counter(r.path for r in receiver.received) == {"/first": 2, "/second": 1, "/third": 1}


async def test_deliveries_in_flight_in_another_process_count_against_their_account(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    other_user: factories.Account,
    receiver: Receiver,
) -> None:
    await make_hook(client, user, f"{receiver.url}/busy")
    await make_hook(client, other_user, f"{receiver.url}/other")
    for _ in range(4):
        await record(app, version_created(user))
    await record(app, version_created(other_user))
    now = utcnow()
    # Another process is attempting two of the account's deliveries right now.
    taken = [row.id for row in (await deliveries_of(app, user))[:2]]
    async with state_of(app).sessions() as db:
        await db.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(taken))
            .values(claimed_until=now + timedelta(minutes=1))
        )
        await db.commit()
    worker = worker_of(app, concurrency=10, account_concurrency=3)
    try:
        assert await worker.run_once(now) == 2
        assert await worker.run_once(now) == 1  # the first ended: one place again
        assert await worker.run_once(now) == 0  # the other process's two remain
    finally:
        await worker.aclose()

    assert Counter(r.path for r in receiver.received) == {"/busy": 2, "/other": 1}


# --- retention of finished deliveries -------------------------------------------------------


async def test_a_finished_delivery_is_kept_for_the_retention_after_its_last_attempt(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
) -> None:
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    await record(app, version_created(user))
    # Its last attempt comes long after it was queued (a redelivery, say).
    last = utcnow() + timedelta(days=20)
    worker = worker_of(app, retention=RETENTION)
    try:
        assert await worker.run_once(last) == 1

        assert await worker.delete_expired(last + RETENTION - timedelta(seconds=1)) == 0
        assert len(await delivery_log(client, user, hook["id"])) == 1
        assert await worker.delete_expired(last + RETENTION + timedelta(seconds=1)) == 1
    finally:
        await worker.aclose()

    assert await delivery_log(client, user, hook["id"]) == []


async def test_a_pending_delivery_is_never_deleted_by_the_retention(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
) -> None:
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    receiver.script(Reply(500))
    await record(app, version_created(user))
    now = utcnow()
    worker = worker_of(app, retention=RETENTION)
    try:
        assert await worker.run_once(now) == 1  # failed once: pending, retried later

        assert await worker.delete_expired(now + 10 * RETENTION) == 0
    finally:
        await worker.aclose()

    [logged] = await delivery_log(client, user, hook["id"])
    assert (logged["status"], logged["attempts"]) == ("pending", 1)


async def test_expired_deliveries_are_deleted_in_bounded_batches(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
    receiver: Receiver,
) -> None:
    await make_hook(client, user, f"{receiver.url}/hook")
    receiver.default = Reply(410)
    for _ in range(7):
        await record(app, version_created(user))
    async with state_of(app).sessions() as db:
        await db.execute(update(Webhook).values(is_active=False))  # each fails at its attempt
        await db.commit()
    now = utcnow()
    worker = worker_of(app, retention=RETENTION, retention_batch_rows=3)
    try:
        while await worker.run_once(now):
            pass
        assert {row.status for row in await deliveries_of(app, user)} == {"failed"}

        assert await worker.delete_expired(now + RETENTION + timedelta(seconds=1)) == 7
    finally:
        await worker.aclose()

    assert await count_deliveries(app) == 0


async def test_the_apps_own_worker_deletes_expired_deliveries(
    tmp_path: Path,
    database_url: str,
    app: FastAPI,
    client: httpx.AsyncClient,
    user: factories.Account,
) -> None:
    hook = await make_hook(client, user, "http://127.0.0.1:9/hook")
    await record(app, version_created(user))
    await record(app, version_created(user))
    [old, recent] = await deliveries_of(app, user)
    async with state_of(app).sessions() as db:
        for row, age in ((old, timedelta(days=2)), (recent, timedelta(hours=1))):
            await db.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == row.id)
                .values(status="delivered", attempts=1, next_attempt_at=utcnow() - age)
            )
        await db.commit()
    settings = make_settings(tmp_path / "sweeper", database_url, webhook_delivery_retention_days=1)

    async with factories.serve(settings), asyncio.timeout(WAIT_SECONDS):
        while True:  # its first turn sweeps, just after it starts
            log = await delivery_log(client, user, hook["id"])
            if len(log) == 1:
                break
            await asyncio.sleep(0.02)

    [kept] = log
    assert kept["id"] == str(recent.id)
