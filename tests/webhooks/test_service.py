"""Webhook rules decided by the rows alone (both databases): which webhooks an action is queued
for, what a webhook may point at, the per-account limit, and redelivery."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.changes.events import Action
from modelyard.db.tables import User, Webhook, WebhookDelivery
from modelyard.db.types import utcnow
from modelyard.errors import Conflict, Unprocessable
from modelyard.webhooks import service
from modelyard.webhooks.schemas import EventType, WebhookCreate, WebhookUpdate
from tests.support.events import RecordedEvents
from tests.support.rows import add_user, make_model

URL = "https://hooks.example.com/modelyard/s3cr3t-path"
CREATED = EventType.MODEL_VERSION_CREATED
PROMOTED = EventType.MODEL_VERSION_STAGE_CHANGED


async def subscribe(
    db: AsyncSession,
    user: User,
    *types: EventType,
    model: str | None = None,
    active: bool = True,
    **options: object,
) -> Webhook:
    data = WebhookCreate(url=URL, events=list(types), model=model, active=active)
    kwargs: dict[str, object] = {"allow_private_networks": False, **options}
    made = await service.create_webhook(db, user, data, events=RecordedEvents(), **kwargs)  # type: ignore[arg-type]
    return made.row


def action(user: User, name: str, model_id: uuid.UUID | None) -> Action:
    """An action of `user`'s, named as services name them (a plain string)."""
    return Action(
        name=str(name),
        target_type="model_version",
        target_id="t",
        owner_id=user.id,
        model_id=model_id,
    )


async def queued_for(db: AsyncSession) -> list[uuid.UUID]:
    return list(await db.scalars(select(WebhookDelivery.webhook_id)))


async def test_an_action_is_queued_for_each_active_webhook_of_its_owner_that_wants_it(
    db: AsyncSession,
) -> None:
    alice, bob = await add_user(db), await add_user(db)
    iris, _ = await make_model(db, alice.id, name="iris")
    await make_model(db, alice.id, name="wine")
    every_model = await subscribe(db, alice, CREATED, PROMOTED)
    iris_only = await subscribe(db, alice, CREATED, model="iris")
    await subscribe(db, alice, CREATED, model="wine")  # another model
    await subscribe(db, alice, PROMOTED)  # another type
    await subscribe(db, alice, CREATED, active=False)
    await subscribe(db, bob, CREATED)  # another owner

    queued = await service.queue_deliveries(db, action(alice, CREATED, iris.id))

    assert queued == 2
    assert sorted(await queued_for(db)) == sorted([every_model.id, iris_only.id])


async def test_an_action_about_no_model_reaches_only_webhooks_of_every_model(
    db: AsyncSession,
) -> None:
    user = await add_user(db)
    await make_model(db, user.id, name="iris")
    every_model = await subscribe(db, user, CREATED)
    await subscribe(db, user, CREATED, model="iris")

    assert await service.queue_deliveries(db, action(user, CREATED, None)) == 1
    assert await queued_for(db) == [every_model.id]


async def test_actions_that_are_no_event_type_queue_nothing(db: AsyncSession) -> None:
    user = await add_user(db)
    await subscribe(db, user, *EventType)

    assert await service.queue_deliveries(db, action(user, "api_key.created", None)) == 0
    assert await queued_for(db) == []


async def test_the_payload_carries_the_actions_details_model_and_target(
    db: AsyncSession,
) -> None:
    user = await add_user(db)
    model, _ = await make_model(db, user.id, name="iris")
    await subscribe(db, user, PROMOTED)
    now = utcnow()
    promoted = Action(
        name=PROMOTED.value,
        target_type="model_version",
        target_id="v-1",
        owner_id=user.id,
        model_id=model.id,
        details={"model": "iris", "version": 1, "to": "production"},
    )

    await service.queue_deliveries(db, promoted, now=now)

    payload = await db.scalar(select(WebhookDelivery.payload))
    assert payload == {
        "type": "model_version.stage_changed",
        "timestamp": now.isoformat(),
        "data": {
            "model": "iris",
            "version": 1,
            "to": "production",
            "model_id": str(model.id),
            "target_id": "v-1",
        },
    }


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9000/hook", "http://localhost/hook", "http://[::1]/hook"],
    ids=["loopback", "localhost", "ipv6 loopback"],
)
async def test_a_webhook_may_reach_this_machine_only_where_private_networks_are_allowed(
    db: AsyncSession, url: str
) -> None:
    user = await add_user(db)
    data = WebhookCreate(url=url, events=[CREATED])

    with pytest.raises(Unprocessable, match="only reach public addresses"):
        await service.create_webhook(
            db, user, data, allow_private_networks=False, events=RecordedEvents()
        )
    made = await service.create_webhook(
        db, user, data, allow_private_networks=True, events=RecordedEvents()
    )
    assert made.row.url == url


async def test_a_webhook_may_name_only_a_model_of_its_owner(db: AsyncSession) -> None:
    alice, bob = await add_user(db), await add_user(db)
    model, _ = await make_model(db, alice.id, name="iris")
    hook = await subscribe(db, bob, CREATED)

    for ref in ("iris", str(model.id)):
        with pytest.raises(Unprocessable, match="not found among your models"):
            await subscribe(db, bob, CREATED, model=ref)
        with pytest.raises(Unprocessable, match="not found among your models"):
            await service.update_webhook(
                db,
                bob,
                hook,
                WebhookUpdate(model=ref),
                allow_private_networks=False,
                events=RecordedEvents(),
            )


async def test_an_account_makes_no_more_webhooks_than_its_limit(db: AsyncSession) -> None:
    user = await add_user(db)
    user_id = user.id
    for _ in range(2):
        await subscribe(db, user, CREATED, max_per_account=2)

    with pytest.raises(service.WebhookLimitReached, match="at most 2 webhooks"):
        await subscribe(db, user, CREATED, max_per_account=2)
    count = select(func.count()).select_from(Webhook).where(Webhook.user_id == user_id)
    assert await db.scalar(count) == 2


async def test_another_users_webhook_is_not_found_even_by_an_admin(db: AsyncSession) -> None:
    alice = await add_user(db)
    admin = await add_user(db, is_admin=True)
    hook = await subscribe(db, alice, CREATED)

    with pytest.raises(service.WebhookNotFound):
        await service.get_webhook(db, admin, hook.id)
    assert (await service.get_webhook(db, alice, hook.id)).id == hook.id


async def test_the_audit_record_of_a_webhook_keeps_neither_its_secret_nor_its_path(
    db: AsyncSession,
) -> None:
    user = await add_user(db)
    events = RecordedEvents()
    data = WebhookCreate(url=URL, events=[CREATED])

    made = await service.create_webhook(db, user, data, allow_private_networks=False, events=events)
    rotated = await service.rotate_secret(db, made.row, events=events)

    assert rotated.secret != made.secret
    assert events.names() == ["webhook.created", "webhook.updated"]
    for recorded in events.actions:
        assert recorded.details["url"] == "https://hooks.example.com"
        text = str(recorded)
        assert "s3cr3t-path" not in text
        assert made.secret not in text
        assert rotated.secret not in text


async def test_a_redelivery_is_due_now_with_its_attempts_reset(db: AsyncSession) -> None:
    user = await add_user(db)
    hook = await subscribe(db, user, CREATED)
    await service.queue_deliveries(db, action(user, CREATED, None))
    delivery = await db.scalar(select(WebhookDelivery))
    assert delivery is not None
    delivery.status, delivery.attempts = "failed", 8
    delivery.next_attempt_at = utcnow() + timedelta(days=1)
    await db.commit()
    now = utcnow()

    again = await service.redeliver(db, hook, delivery.id, now=now)

    assert (again.id, again.status, again.attempts) == (delivery.id, "pending", 0)
    assert again.next_attempt_at.replace(tzinfo=None) == now.replace(tzinfo=None)


async def test_a_delivery_a_worker_holds_is_not_queued_again(db: AsyncSession) -> None:
    user = await add_user(db)
    hook = await subscribe(db, user, CREATED)
    await service.queue_deliveries(db, action(user, CREATED, None))
    delivery = await db.scalar(select(WebhookDelivery))
    assert delivery is not None
    delivery.claimed_until = utcnow() + timedelta(minutes=1)
    await db.commit()

    with pytest.raises(Conflict, match="being attempted right now"):
        await service.redeliver(db, hook, delivery.id)
    with pytest.raises(service.DeliveryNotFound):
        await service.redeliver(db, hook, uuid.uuid4())


async def test_deleting_a_webhook_deletes_its_pending_deliveries(db: AsyncSession) -> None:
    user = await add_user(db)
    hook = await subscribe(db, user, CREATED)
    await service.queue_deliveries(db, action(user, CREATED, None))

    await service.delete_webhook(db, hook, events=RecordedEvents())

    assert await queued_for(db) == []
