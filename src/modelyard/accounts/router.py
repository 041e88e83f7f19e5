"""Routes of `/api/v1/users` (user administration) and `DELETE /api/v1/auth/me` (erasure)."""

from __future__ import annotations

import uuid

from fastapi import status

from modelyard.accounts import erasure
from modelyard.accounts.deps import PredictionLogDep
from modelyard.accounts.schemas import UserDetail
from modelyard.accounts.service import describe_user
from modelyard.artifacts.deps import StoreDep
from modelyard.auth import service as auth_service
from modelyard.auth.deps import AdminUser, CallerDep
from modelyard.auth.schemas import UserAdminUpdate, UserRead
from modelyard.changes.deps import EventsDep
from modelyard.db.deps import SessionDep
from modelyard.db.tables import User
from modelyard.edge.routing import make_router
from modelyard.schemas import Page, PageDep, make_page

# The caller's own account, beside the other `/api/v1/auth` routes in the API.
me_router = make_router(prefix="/api/v1/auth", tags=["auth"])
users_router = make_router(prefix="/api/v1/users", tags=["users"])


@me_router.delete("/me", status_code=status.HTTP_204_NO_CONTENT)
async def erase_me(
    caller: CallerDep,
    db: SessionDep,
    events: EventsDep,
    store: StoreDep,
    prediction_log: PredictionLogDep,
) -> None:
    """Erase the caller's account and everything it owns, irreversibly: models, versions,
    artifacts, files, experiments, keys, sessions. Needs a signed-in session (a bearer token),
    not an API key; logged predictions keep their numbers without the person."""
    await erasure.erase_own_account(
        db, caller, store=store, events=events, prediction_log=prediction_log
    )


@users_router.get("", response_model=Page[UserRead])
async def list_users(_: AdminUser, db: SessionDep, page: PageDep) -> Page[UserRead]:
    """List every user (admin only)."""
    rows, total = await auth_service.list_users(db, page)
    return make_page(UserRead, rows, total, page)


@users_router.patch("/{user_id}", response_model=UserRead)
async def update_user(
    user_id: uuid.UUID, body: UserAdminUpdate, admin: AdminUser, db: SessionDep, events: EventsDep
) -> User:
    """Activate, deactivate, promote or demote a user (admin only); any change ends the
    user's sessions and API keys."""
    return await auth_service.update_user(db, admin, user_id, body, events=events)


@users_router.get("/{user_id}", response_model=UserDetail)
async def get_user(user_id: uuid.UUID, _: AdminUser, db: SessionDep) -> UserDetail:
    """Return one user, with how much it owns (admin only)."""
    return await describe_user(db, user_id)


@users_router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def erase_user(
    user_id: uuid.UUID,
    admin: AdminUser,
    db: SessionDep,
    events: EventsDep,
    store: StoreDep,
    prediction_log: PredictionLogDep,
) -> None:
    """Erase a user's account and everything it owns, irreversibly (admin only; an admin's
    own account goes through `DELETE /api/v1/auth/me`, and the last active admin stays)."""
    await erasure.erase_user_as_admin(
        db,
        admin,
        user_id,
        store=store,
        events=events,
        prediction_log=prediction_log,
    )
