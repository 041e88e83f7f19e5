"""Dashboard pages of the user's webhooks (the API's `/api/v1/webhooks`): list, create (the
signing secret shown once), delete, and a webhook's recent deliveries."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from pydantic import ValidationError
from starlette.responses import Response

from modelyard.db.deps import SessionDep
from modelyard.errors import ModelyardError
from modelyard.registry import service as registry_service
from modelyard.schemas import PageParams
from modelyard.web.http import (
    CSRF_FIELD,
    FormDep,
    Page,
    UserPage,
    WebRoute,
    problem_text,
    redirect,
    render,
)
from modelyard.webhooks import service as webhooks_service
from modelyard.webhooks.schemas import EventType, WebhookCreate

router = APIRouter(route_class=WebRoute, include_in_schema=False)

PAGE_SIZE = 25
MODEL_CHOICES = 100
Offset = Annotated[int, Query(ge=0, le=2**31)]


async def _webhooks_page(
    page: Page, db: SessionDep, offset: int = 0, status: int = 200, **extra: Any
) -> Response:
    user = page.signed_in
    rows, total = await webhooks_service.list_webhooks(
        db, user, PageParams(limit=PAGE_SIZE, offset=offset)
    )
    models, _ = await registry_service.list_models(
        db, user, page=PageParams(limit=MODEL_CHOICES, offset=0), sort="name"
    )
    context: dict[str, Any] = {"error": None, "created": None, "values": {}, "chosen": [], **extra}
    return render(
        page,
        "webhooks.html",
        status,
        webhooks=rows,
        model_names={view.model.id: view.model.name for view in models},
        total=total,
        offset=offset,
        limit=PAGE_SIZE,
        event_types=[e.value for e in EventType],
        **context,
    )


@router.get("/webhooks")
async def webhooks(page: UserPage, db: SessionDep, offset: Offset = 0) -> Response:
    return await _webhooks_page(page, db, offset)


@router.post("/webhooks")
async def create(page: UserPage, form: FormDep, db: SessionDep) -> Response:
    """Create a webhook; the answer is the page with its secret, which is never shown again."""
    values = {k: v for k, v in form.items() if isinstance(v, str) and k != CSRF_FIELD}
    chosen = [str(e) for e in form.getlist("events")]
    settings = page.state.settings
    try:
        body = WebhookCreate.model_validate(
            {
                "url": values.get("url", "").strip(),
                "events": chosen,
                "model": values.get("model") or None,
                "description": values.get("description", "").strip() or None,
            }
        )
        new = await webhooks_service.create_webhook(
            db,
            page.signed_in,
            body,
            allow_private_networks=settings.webhook_allow_private_networks,
            events=page.state.events,
            max_per_account=settings.webhook_max_per_account,
        )
    except ValidationError as exc:
        error = problem_text(exc)
        return await _webhooks_page(page, db, 0, 422, error=error, values=values, chosen=chosen)
    except ModelyardError as exc:
        return await _webhooks_page(
            page, db, 0, exc.status, error=exc.detail, values=values, chosen=chosen
        )
    return await _webhooks_page(page, db, created=new)


@router.post("/webhooks/{webhook_id}/delete")
async def delete(webhook_id: uuid.UUID, page: UserPage, form: FormDep, db: SessionDep) -> Response:
    webhook = await webhooks_service.get_webhook(db, page.signed_in, webhook_id)
    await webhooks_service.delete_webhook(db, webhook, events=page.state.events)
    return redirect("/webhooks")


@router.get("/webhooks/{webhook_id}")
async def webhook(
    webhook_id: uuid.UUID, page: UserPage, db: SessionDep, offset: Offset = 0
) -> Response:
    """A webhook and its deliveries, newest first."""
    found = await webhooks_service.get_webhook(db, page.signed_in, webhook_id)
    deliveries, total = await webhooks_service.list_deliveries(
        db, found, PageParams(limit=PAGE_SIZE, offset=offset)
    )
    return render(
        page,
        "webhook.html",
        webhook=found,
        deliveries=deliveries,
        total=total,
        offset=offset,
        limit=PAGE_SIZE,
        json=lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode(),
    )
