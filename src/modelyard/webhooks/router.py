"""Routes of `/api/v1/webhooks`: a user's webhooks, their delivery log and redelivery."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, status

from modelyard.auth.deps import CurrentUser
from modelyard.changes.deps import EventsDep
from modelyard.db.deps import SessionDep
from modelyard.db.tables import Webhook, WebhookDelivery
from modelyard.deps import SettingsDep
from modelyard.edge.routing import make_router
from modelyard.schemas import Page, PageDep, make_page
from modelyard.webhooks import service
from modelyard.webhooks.deps import DeliveryWorkerDep
from modelyard.webhooks.schemas import (
    DeliveryRead,
    WebhookCreate,
    WebhookCreated,
    WebhookRead,
    WebhookUpdate,
)

router = make_router(prefix="/api/v1/webhooks", tags=["webhooks"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such webhook among the caller's"}
}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"description": "an invalid URL or event, a non-public address, or an unknown model"}
}


async def owned_webhook(webhook_id: uuid.UUID, user: CurrentUser, db: SessionDep) -> Webhook:
    """Return the caller's webhook `{webhook_id}` (404 for anyone else's)."""
    return await service.get_webhook(db, user, webhook_id)


OwnedWebhook = Annotated[Webhook, Depends(owned_webhook)]


def _created(new: service.NewSecret) -> WebhookCreated:
    return WebhookCreated.model_validate(
        {**WebhookRead.model_validate(new.row).model_dump(), "secret": new.secret}
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    responses={
        **INVALID,
        403: {"description": "the account has `MODELYARD_WEBHOOK_MAX_PER_ACCOUNT` webhooks"},
    },
)
async def create_webhook(
    body: WebhookCreate, user: CurrentUser, db: SessionDep, events: EventsDep, settings: SettingsDep
) -> WebhookCreated:
    """Subscribe a URL to events of the caller's models (one model with `model`); the signing
    secret is in this answer only."""
    new = await service.create_webhook(
        db,
        user,
        body,
        allow_private_networks=settings.webhook_allow_private_networks,
        events=events,
        max_per_account=settings.webhook_max_per_account,
    )
    return _created(new)


@router.get("", response_model=Page[WebhookRead])
async def list_webhooks(user: CurrentUser, db: SessionDep, page: PageDep) -> Page[WebhookRead]:
    """List the caller's webhooks, newest first (never their secrets)."""
    rows, total = await service.list_webhooks(db, user, page)
    return make_page(WebhookRead, rows, total, page)


@router.get("/{webhook_id}", response_model=WebhookRead, responses=NOT_FOUND)
async def get_webhook(webhook: OwnedWebhook) -> Webhook:
    """Show one of the caller's webhooks (not its secret)."""
    return webhook


@router.patch("/{webhook_id}", response_model=WebhookRead, responses={**NOT_FOUND, **INVALID})
async def update_webhook(
    webhook: OwnedWebhook,
    body: WebhookUpdate,
    user: CurrentUser,
    db: SessionDep,
    events: EventsDep,
    settings: SettingsDep,
) -> Webhook:
    """Change a webhook's URL, events, model (`null`: every model), description or `active`."""
    return await service.update_webhook(
        db,
        user,
        webhook,
        body,
        allow_private_networks=settings.webhook_allow_private_networks,
        events=events,
    )


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_webhook(webhook: OwnedWebhook, db: SessionDep, events: EventsDep) -> None:
    """Delete a webhook and its delivery log; what it had pending is never sent."""
    await service.delete_webhook(db, webhook, events=events)


@router.post("/{webhook_id}/rotate-secret", response_model=WebhookCreated, responses=NOT_FOUND)
async def rotate_secret(webhook: OwnedWebhook, db: SessionDep, events: EventsDep) -> WebhookCreated:
    """Replace the signing secret (in this answer only); the old one stops signing at once."""
    return _created(await service.rotate_secret(db, webhook, events=events))


@router.get("/{webhook_id}/deliveries", response_model=Page[DeliveryRead], responses=NOT_FOUND)
async def list_deliveries(
    webhook: OwnedWebhook, db: SessionDep, page: PageDep
) -> Page[DeliveryRead]:
    """List a webhook's deliveries, newest first: status, attempts, last response."""
    rows, total = await service.list_deliveries(db, webhook, page)
    return make_page(DeliveryRead, rows, total, page)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryRead,
    responses={
        404: {"description": "no such webhook or delivery"},
        409: {"description": "the delivery is being attempted right now"},
    },
)
async def redeliver(
    webhook: OwnedWebhook, delivery_id: uuid.UUID, db: SessionDep, webhooks: DeliveryWorkerDep
) -> WebhookDelivery:
    """Queue a delivery again (delivered or failed alike), due now, with the same `webhook-id`
    and a fresh retry schedule."""
    row = await service.redeliver(db, webhook, delivery_id)
    if webhooks is not None:
        webhooks.wake()
    return row
