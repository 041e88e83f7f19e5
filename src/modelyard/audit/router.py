"""`GET /api/v1/audit`: the audit log, as far as the caller may see it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import AwareDatetime, Field

from modelyard.audit import service
from modelyard.auth.deps import CallerDep
from modelyard.auth.scopes import Scope
from modelyard.auth.service import Caller
from modelyard.db.deps import SessionDep
from modelyard.edge.routing import make_router
from modelyard.schemas import MAX_PAGE_SIZE, ReadModel

router = make_router(prefix="/api/v1/audit", tags=["audit"])


class AuditEventRead(ReadModel):
    seq: int = Field(description="the row's number in the chain, from 1, without gaps")
    at: datetime
    action: str = Field(description="`<target type>.<verb>`, e.g. `model_version.created`")
    outcome: Literal["success", "failure"]
    actor_user_id: uuid.UUID | None = Field(description="who did it; null: nobody signed in")
    actor_api_key_id: uuid.UUID | None = Field(description="the API key used, if one was")
    target_type: str
    target_id: str | None
    owner_id: uuid.UUID | None = Field(description="the account the target belongs to")
    model_id: uuid.UUID | None
    client_address: str | None
    user_agent: str | None
    request_id: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str = Field(description="sha256 of `prev_hash` and this row: see docs/guides/audit.md")


class AuditPage(ReadModel):
    items: list[AuditEventRead]
    limit: int
    next: str | None = Field(
        description="pass as `cursor` for the page after this one; null on the last page"
    )


def sees_everything(caller: Caller) -> bool:
    """Admins see every row (with an API key: one with the `admin` scope)."""
    return caller.user.is_admin and (caller.scopes is None or Scope.ADMIN in caller.scopes)


@router.get("", response_model=AuditPage)
async def list_audit_events(
    caller: CallerDep,
    db: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[1-9][0-9]{0,17}$", description="the `next` of the previous page"),
    ] = None,
    action: Annotated[
        str | None,
        Query(
            max_length=64,
            description="one action (`auth.login_failed`), or every action of a kind with a "
            "trailing dot (`auth.`)",
        ),
    ] = None,
    outcome: Literal["success", "failure"] | None = None,
    actor_user_id: uuid.UUID | None = None,
    actor_api_key_id: uuid.UUID | None = None,
    owner_id: uuid.UUID | None = None,
    target_type: Annotated[str | None, Query(max_length=32)] = None,
    target_id: Annotated[str | None, Query(max_length=1100)] = None,
    model_id: uuid.UUID | None = None,
    since: Annotated[
        AwareDatetime | None, Query(description="from this time on, inclusive")
    ] = None,
    until: Annotated[AwareDatetime | None, Query(description="before this time")] = None,
) -> AuditPage:
    """List recorded actions, newest first: sign-ins, keys, users, uploads, lifecycle, aliases,
    deletions, download links, webhooks.

    Admins (with an API key: one with the `admin` scope) see every row; everyone else the rows
    about their account and its things, and what they did themselves.
    """
    user = caller.user
    filters = service.AuditFilter(
        action=action,
        outcome=outcome,
        actor_user_id=actor_user_id,
        actor_api_key_id=actor_api_key_id,
        owner_id=owner_id,
        target_type=target_type,
        target_id=target_id,
        model_id=model_id,
        since=since,
        until=until,
    )
    rows = await service.list_events(
        db,
        user,
        filters,
        everything=sees_everything(caller),
        limit=limit + 1,
        before=None if cursor is None else int(cursor),
    )
    items = rows[:limit]
    return AuditPage(
        items=[AuditEventRead.model_validate(row) for row in items],
        limit=limit,
        next=str(items[-1].seq) if len(rows) > limit else None,
    )
