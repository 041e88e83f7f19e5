"""Dashboard page of the audit log (the API's `GET /api/v1/audit`): the rows about the user's
account and things and what it did (an admin: every row), newest first, with the API's filters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query
from starlette.responses import Response

from modelyard.audit import service as audit_service
from modelyard.audit.router import sees_everything
from modelyard.auth.service import Caller
from modelyard.db.deps import SessionDep
from modelyard.web.http import UserPage, WebRoute, render

router = APIRouter(route_class=WebRoute, include_in_schema=False)

PAGE_SIZE = 50


def _day(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None


@router.get("/audit")
async def audit(
    page: UserPage,
    db: SessionDep,
    action: Annotated[str, Query(max_length=64)] = "",
    outcome: Literal["", "success", "failure"] = "",
    target_type: Annotated[str, Query(max_length=32)] = "",
    model_id: uuid.UUID | None = None,
    actor_user_id: uuid.UUID | None = None,
    since: Annotated[str, Query(max_length=10)] = "",
    until: Annotated[str, Query(max_length=10)] = "",
    cursor: Annotated[str, Query(pattern=r"^([1-9][0-9]{0,17})?$")] = "",
) -> Response:
    """`since` and `until` are days (UTC), `until` included; `cursor` is the row after which
    the next page starts, as in the API."""
    user = page.signed_in
    first, last = _day(since), _day(until)
    filters = audit_service.AuditFilter(
        action=action.strip() or None,
        outcome=outcome or None,
        target_type=target_type.strip() or None,
        model_id=model_id,
        actor_user_id=actor_user_id,
        since=first,
        until=last + timedelta(days=1) if last else None,
    )
    everything = sees_everything(Caller(user, None))
    rows = await audit_service.list_events(
        db,
        user,
        filters,
        everything=everything,
        limit=PAGE_SIZE + 1,
        before=int(cursor) if cursor else None,
    )
    items = rows[:PAGE_SIZE]
    query = {
        "action": action,
        "outcome": outcome,
        "target_type": target_type,
        "model_id": str(model_id or ""),
        "actor_user_id": str(actor_user_id or ""),
        "since": since if first else "",
        "until": until if last else "",
    }
    return render(
        page,
        "audit.html",
        rows=items,
        everything=everything,
        next_cursor=str(items[-1].seq) if len(rows) > PAGE_SIZE else None,
        query={k: v for k, v in query.items() if v},
        values=query,
        json=lambda v: orjson.dumps(v).decode(),
    )
