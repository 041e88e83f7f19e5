"""Who is calling: `CurrentUser` from a bearer JWT or an API key, `AdminUser` for admin routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer

from modelyard.auth import service
from modelyard.db.deps import SessionDep
from modelyard.db.tables import User
from modelyard.errors import Forbidden, Unauthorized
from modelyard.state import app_state

# Declared as security schemes so that /docs offers the Authorize button for both. Neither
# raises on its own: a missing credential is our 401 problem with WWW-Authenticate.
bearer_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/login", auto_error=False)
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False)


async def current_user(
    request: Request,
    db: SessionDep,
    bearer: Annotated[str | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> User:
    """Return the active user behind the request's credential.

    Raises:
        Unauthorized: no credential, or one that is invalid, expired, revoked or deactivated.
    """
    if api_key:
        return await service.user_from_api_key(db, api_key)
    if not bearer:
        raise Unauthorized("not authenticated")
    # Stock clients that can only set a bearer token send API keys that way too.
    if service.looks_like_api_key(bearer):
        return await service.user_from_api_key(db, bearer)
    return await service.user_from_access_token(db, bearer, tokens=app_state(request).tokens)


CurrentUser = Annotated[User, Depends(current_user)]


async def admin_user(user: CurrentUser) -> User:
    """Return the caller if it is an admin.

    Raises:
        Forbidden: the caller is not an admin.
    """
    if not user.is_admin:
        raise Forbidden("admin only")
    return user


AdminUser = Annotated[User, Depends(admin_user)]

AUTH_RATE_WINDOW_SECONDS = 60


async def auth_rate_limit(request: Request) -> None:
    """Limit unauthenticated auth attempts per client address (password guessing, spraying).

    Raises:
        RateLimited: past `auth_rate_limit_per_minute`.
    """
    state = app_state(request)
    address = request.client.host if request.client else "unknown"
    await state.rate_limiter.hit(
        f"auth:{address}",
        limit=state.settings.auth_rate_limit_per_minute,
        window_seconds=AUTH_RATE_WINDOW_SECONDS,
    )
