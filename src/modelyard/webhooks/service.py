"""Use cases of webhooks: subscriptions of a user, the deliveries an action queues, the log."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Select, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.changes.events import Action, Events
from modelyard.db import sql
from modelyard.db.sql import rowcount
from modelyard.db.tables import RegisteredModel, User, Webhook, WebhookDelivery
from modelyard.db.types import utcnow
from modelyard.errors import Conflict, Forbidden, NotFound, Unprocessable
from modelyard.registry import queries
from modelyard.schemas import PageParams
from modelyard.webhooks.outbound import RefusedAddress, check_host
from modelyard.webhooks.schemas import DeliveryStatus, EventType, WebhookCreate, WebhookUpdate
from modelyard.webhooks.signing import new_secret

log = logging.getLogger(__name__)

EVENT_TYPES = frozenset(EventType)


class WebhookNotFound(NotFound):
    def __init__(self, ref: uuid.UUID) -> None:
        super().__init__(f"webhook '{ref}' not found")


class DeliveryNotFound(NotFound):
    def __init__(self, ref: uuid.UUID) -> None:
        super().__init__(f"delivery '{ref}' not found")


class WebhookLimitReached(Forbidden):
    """The account has as many webhooks as it may: a limit of the account, not of time (no
    waiting lifts it; deleting a webhook does)."""

    type = "webhook-limit"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"an account may have at most {limit} webhooks; delete one to make another"
        )


@dataclass(frozen=True, slots=True)
class NewSecret:
    """A webhook and its signing secret, which is shown in this answer only."""

    row: Webhook
    secret: str


def owned_webhooks(user: User) -> Select[Webhook]:
    """Select the webhooks `user` owns: the one place webhooks are filtered by owner (admins
    included: a webhook is its owner's alone)."""
    return select(Webhook).where(Webhook.user_id == user.id)


async def get_webhook(db: AsyncSession, user: User, webhook_id: uuid.UUID) -> Webhook:
    """Return the caller's webhook.

    Raises:
        WebhookNotFound: no such webhook, or another user's (never revealed).
    """
    found: Webhook | None = await db.scalar(owned_webhooks(user).where(Webhook.id == webhook_id))
    if found is None:
        raise WebhookNotFound(webhook_id)
    return found


async def create_webhook(
    db: AsyncSession,
    user: User,
    data: WebhookCreate,
    *,
    allow_private_networks: bool,
    events: Events,
    max_per_account: int = 0,
) -> NewSecret:
    """Subscribe `data.url` to the caller's events; the secret is returned here only.

    Raises:
        Unprocessable: the URL names a non-public address (unless private networks are
            allowed), or `model` is none of the caller's models.
        WebhookLimitReached: the caller has `max_per_account` webhooks already (0: no limit).
    """
    _check_url(data.url, allow_private_networks)
    model_id = await _own_model_id(db, user, data.model) if data.model is not None else None
    if max_per_account:
        await _lock_account(db, user)
        count = await db.scalar(
            select(func.count()).select_from(Webhook).where(Webhook.user_id == user.id)
        )
        if (count or 0) >= max_per_account:
            await db.rollback()
            raise WebhookLimitReached(max_per_account)
    secret = new_secret()
    row = Webhook(
        user_id=user.id,
        url=data.url,
        events=_ordered(data.events),
        model_id=model_id,
        secret=secret,
        description=data.description,
        is_active=data.active,
    )
    db.add(row)
    await db.commit()
    log.info("webhook_created", extra={"user_id": str(user.id), "webhook_id": str(row.id)})
    await events.record(_action("webhook.created", row, _describe(row)))
    return NewSecret(row=row, secret=secret)


async def list_webhooks(
    db: AsyncSession, user: User, page: PageParams
) -> tuple[Sequence[Webhook], int]:
    """Return a page of the caller's webhooks, newest first, and their total."""
    query = owned_webhooks(user)
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(
        query.order_by(Webhook.created_at.desc(), Webhook.id).limit(page.limit).offset(page.offset)
    )
    return list(rows), total or 0


async def update_webhook(
    db: AsyncSession,
    user: User,
    webhook: Webhook,
    data: WebhookUpdate,
    *,
    allow_private_networks: bool,
    events: Events,
) -> Webhook:
    """Change a webhook's URL, events, model, description or whether it is active.

    Raises:
        Unprocessable: as `create_webhook`; or `url`, `events` or `active` given as null.
    """
    given = data.model_fields_set
    for name in ("url", "events", "active"):
        if name in given and getattr(data, name) is None:
            raise Unprocessable(f"{name} cannot be null")
    if data.url is not None:
        _check_url(data.url, allow_private_networks)
        webhook.url = data.url
    if data.events is not None:
        webhook.events = _ordered(data.events)
    if "model" in given:
        webhook.model_id = (
            await _own_model_id(db, user, data.model) if data.model is not None else None
        )
    if "description" in given:
        webhook.description = data.description
    if data.active is not None:
        webhook.is_active = data.active
    webhook.updated_at = utcnow()
    await db.commit()
    changed = sorted(given)
    await events.record(
        _action("webhook.updated", webhook, {**_describe(webhook), "changed": changed})
    )
    return webhook


async def rotate_secret(db: AsyncSession, webhook: Webhook, *, events: Events) -> NewSecret:
    """Give a webhook a new signing secret (returned here only); the old one stops at once,
    for the retries of earlier deliveries too."""
    secret = new_secret()
    webhook.secret = secret
    webhook.updated_at = utcnow()
    await db.commit()
    details = {**_describe(webhook), "changed": ["secret"]}
    await events.record(_action("webhook.updated", webhook, details))
    return NewSecret(row=webhook, secret=secret)


async def delete_webhook(db: AsyncSession, webhook: Webhook, *, events: Events) -> None:
    """Delete a webhook and its delivery log; pending deliveries are never sent."""
    details = _describe(webhook)
    action = _action("webhook.deleted", webhook, details)
    await db.execute(delete(Webhook).where(Webhook.id == webhook.id))
    await db.commit()
    await events.record(action)


async def list_deliveries(
    db: AsyncSession, webhook: Webhook, page: PageParams
) -> tuple[Sequence[WebhookDelivery], int]:
    """Return a page of a webhook's deliveries, newest first, and their total."""
    where = WebhookDelivery.webhook_id == webhook.id
    total = await db.scalar(select(func.count()).select_from(WebhookDelivery).where(where))
    rows = await db.scalars(
        select(WebhookDelivery)
        .where(where)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .limit(page.limit)
        .offset(page.offset)
    )
    return list(rows), total or 0


async def redeliver(
    db: AsyncSession, webhook: Webhook, delivery_id: uuid.UUID, *, now: datetime | None = None
) -> WebhookDelivery:
    """Queue a delivery again, due now, with the full retry schedule ahead of it (its id, the
    receiver's `webhook-id`, stays the same).

    Raises:
        DeliveryNotFound: no such delivery of this webhook.
        Conflict: a worker is sending it right now.
    """
    now = now or utcnow()
    where = (WebhookDelivery.id == delivery_id, WebhookDelivery.webhook_id == webhook.id)
    queued = await db.execute(
        update(WebhookDelivery)
        .where(
            *where,
            # Never under a worker that holds it: its outcome would overwrite this.
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
        )
        .values(
            status=DeliveryStatus.PENDING.value,
            attempts=0,
            next_attempt_at=now,
            claimed_until=None,
            delivered_at=None,
        )
    )
    await db.commit()
    row = await db.scalar(select(WebhookDelivery).where(*where))
    if row is None:
        raise DeliveryNotFound(delivery_id)
    if rowcount(queued) != 1:
        raise Conflict("this delivery is being attempted right now; try again shortly")
    return row


async def queue_deliveries(db: AsyncSession, action: Action, *, now: datetime | None = None) -> int:
    """Queue one delivery of `action` to each active webhook of its owner that wants it (its
    type, and its model or every model); return how many were queued.

    The payload is Standard Webhooks' `{"type", "timestamp", "data"}`, `data` being the
    action's details with `model_id` and `target_id`.
    """
    if action.name not in EVENT_TYPES or action.owner_id is None:
        return 0
    now = now or utcnow()
    query = select(Webhook.id).where(
        Webhook.user_id == action.owner_id,
        Webhook.is_active.is_(True),
        sql.json_array_contains(db, Webhook.events, action.name),
    )
    if action.model_id is None:
        query = query.where(Webhook.model_id.is_(None))
    else:
        query = query.where(or_(Webhook.model_id.is_(None), Webhook.model_id == action.model_id))
    webhook_ids = list(await db.scalars(query))
    if not webhook_ids:
        return 0
    payload = {
        "type": action.name,
        "timestamp": now.isoformat(),
        "data": {
            **action.details,
            "model_id": str(action.model_id) if action.model_id else None,
            "target_id": action.target_id,
        },
    }
    await db.execute(
        insert(WebhookDelivery),
        [
            {
                "id": uuid.uuid4(),
                "webhook_id": webhook_id,
                "event_type": action.name,
                "payload": payload,
                "status": DeliveryStatus.PENDING.value,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for webhook_id in webhook_ids
        ],
    )
    await db.commit()
    return len(webhook_ids)


def _check_url(url: str, allow_private_networks: bool) -> None:
    if allow_private_networks:
        return
    try:
        check_host(urlsplit(url).hostname or "")
    except RefusedAddress as exc:
        raise Unprocessable(
            f"webhooks may only reach public addresses, and {exc} (the server's "
            "MODELYARD_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true allows private networks)"
        ) from exc


async def _lock_account(db: AsyncSession, user: User) -> None:
    """Serialise the account's webhook creations until the transaction ends, so that a count
    read after it stays true until the commit (concurrent creations cannot pass the limit).

    A no-op write on the user's row: PostgreSQL's row lock; on SQLite, the database's one
    write lock, taken before the count is read.
    """
    await db.execute(
        update(User)
        .where(User.id == user.id)
        .values(updated_at=User.updated_at)
        .execution_options(synchronize_session=False)
    )


async def _own_model_id(db: AsyncSession, user: User, ref: str) -> uuid.UUID:
    """Return the id of the caller's own model `ref` (its UUID or name).

    Raises:
        Unprocessable: none of the caller's models (another user's is not revealed).
    """
    try:
        by = RegisteredModel.id == uuid.UUID(ref)
    except ValueError:
        by = RegisteredModel.name == ref
    found = await db.scalar(select(RegisteredModel.id).where(queries.owned_by(user), by))
    if found is None:
        raise Unprocessable(f"model {ref!r} not found among your models")
    return found


def _ordered(types: Sequence[EventType]) -> list[str]:
    """Return `types` without repeats, in the order of `EventType`."""
    given = set(types)
    return [t.value for t in EventType if t in given]


def _describe(webhook: Webhook) -> dict[str, Any]:
    """What the audit log keeps of a webhook: never its secret, nor the URL's path and query
    (Slack, Discord and Teams put their secret in the path, others in the query): its origin
    and a SHA-256 of the whole URL, which tells URLs apart without revealing them."""
    return {
        "url": _origin(webhook.url),
        "url_sha256": hashlib.sha256(webhook.url.encode()).hexdigest(),
        "events": list(webhook.events),
        "model_id": str(webhook.model_id) if webhook.model_id else None,
        "active": webhook.is_active,
    }


def _origin(url: str) -> str:
    """Return `url`'s scheme, host and (if given) port: `https://hooks.slack.com`."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}"


def _action(name: str, webhook: Webhook, details: dict[str, Any]) -> Action:
    return Action(
        name=name,
        target_type="webhook",
        target_id=str(webhook.id),
        owner_id=webhook.user_id,
        model_id=webhook.model_id,
        details=details,
    )
