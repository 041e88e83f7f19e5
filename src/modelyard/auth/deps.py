"""Who is calling: `CurrentUser` from a bearer JWT or an API key, `AdminUser` for admin routes."""

from __future__ import annotations

import uuid
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.auth import service
from modelyard.auth.passwords import PasswordHasher
from modelyard.auth.scopes import Scope, route_needs
from modelyard.auth.service import Caller, FailureLimit
from modelyard.auth.tokens import TokenService
from modelyard.changes.epochs import Epoch
from modelyard.changes.hotcache import EpochCache
from modelyard.changes.outage import OutageCache
from modelyard.db.deps import SessionDep
from modelyard.db.tables import RegisteredModel, User
from modelyard.deps import SettingsDep, component
from modelyard.edge import context
from modelyard.errors import Forbidden, Unauthorized
from modelyard.ratelimit import RateLimiter

# Declared as security schemes so that /docs offers the Authorize button for both. Neither
# raises on its own: a missing credential is our 401 problem with WWW-Authenticate.
bearer_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/login", auto_error=False)
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False)

TokensDep = Annotated[TokenService, Depends(component("tokens"))]
PasswordsDep = Annotated[PasswordHasher, Depends(component("passwords"))]
FailuresDep = Annotated[FailureLimit, Depends(component("failures"))]
RateLimiterDep = Annotated[RateLimiter, Depends(component("rate_limiter"))]


async def current_caller(
    request: Request,
    db: SessionDep,
    bearer: Annotated[str | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> Caller:
    """Return the active user behind the request's credential, and its API key if it used one.

    Raises:
        Unauthorized: no credential, or one that is invalid, expired, revoked or deactivated.
    """
    api_key, bearer = credentials(api_key, bearer)
    if not api_key and not bearer:
        raise Unauthorized("not authenticated")
    # Every request's dependency: its parts are read here, not through three more dependencies.
    parts: CredentialParts = request.app.state.modelyard
    # Hot path: a credential checked in the last minute, with nothing revoked since, is known.
    caller = await parts.caller_cache.fill(
        api_key or bearer or "", lambda: check_credential(parts, db, api_key, bearer)
    )
    context.set_caller(caller.user.id, caller.api_key_id)
    if caller.scopes is not None:
        await authorize(request, db, caller)
    return caller


async def authorize(request: Request, db: AsyncSession, caller: Caller) -> None:
    """Check that an API key may use the request's route: the scope the route needs
    (`scopes.route_needs`) and, for a key limited to models, the model the route addresses.

    Every authenticated route depends on `current_caller`, so every route is checked here; a
    route that names its model in the body (upload) checks the model itself once it has it.

    Raises:
        MissingScope, OutsideModelLimit: the key may not.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        # Only routes reach here; were one not an APIRoute, it would need what admins need.
        caller.require_scope(Scope.ADMIN)
        return
    needs = route_needs(route.methods or (), route.path_format)
    if needs.model_in_body or caller.models is None:
        caller.require_scope(needs.scope)
        return
    ref = request.path_params.get(needs.model_param) if needs.model_param else None
    caller.require(needs.scope, model=await _model_name(db, caller, ref))


async def _model_name(db: AsyncSession, caller: Caller, ref: str | None) -> str | None:
    """Return the name of the caller's own model `ref` (a name, or a UUID looked up)."""
    if ref is None:
        return None
    try:
        model_id = uuid.UUID(ref)
    except ValueError:
        return ref
    return await db.scalar(
        select(RegisteredModel.name).where(
            RegisteredModel.id == model_id, RegisteredModel.owner_id == caller.user.id
        )
    )


def credentials(api_key: str | None, bearer: str | None) -> tuple[str | None, str | None]:
    """Return the (API key, bearer token) to check, from the X-API-Key and Authorization: Bearer
    values; the cache key of the caller is the first one set."""
    # Stock clients that can only set a bearer token send API keys that way too.
    if not api_key and bearer and service.looks_like_api_key(bearer):
        api_key = bearer
    return api_key or None, bearer or None


class CredentialParts(Protocol):
    """The components that check credentials (the app state has them)."""

    @property
    def tokens(self) -> TokenService: ...

    @property
    def outage_cache(self) -> OutageCache[Hashable, Any]: ...

    @property
    def caller_cache(self) -> EpochCache[str, Caller]: ...


async def check_credential(
    parts: CredentialParts, db: AsyncSession, api_key: str | None, bearer: str | None
) -> tuple[Caller, float | None]:
    """Return `verify_credential` with the tokens and outage cache of `parts`."""
    return await verify_credential(
        db, api_key, bearer, tokens=parts.tokens, outage=parts.outage_cache
    )


async def verify_credential(
    db: AsyncSession,
    api_key: str | None,
    bearer: str | None,
    *,
    tokens: TokenService,
    outage: OutageCache[Hashable, Any],
) -> tuple[Caller, float | None]:
    """Check an API key (else a bearer token) against the database, or while the database is
    down against the last success; return the caller and the seconds its credential has left.

    Raises:
        Unauthorized: the credential is invalid, expired, revoked or deactivated.
    """

    async def authenticate() -> Caller:
        try:
            if api_key:
                caller = await service.authenticate_api_key(db, api_key)
            elif bearer:
                user, expires_at = await service.authenticate_access_token(
                    db, bearer, tokens=tokens
                )
                caller = Caller(user, None, expires_at)
            else:
                raise Unauthorized("not authenticated")
        except Exception:
            # The request's session goes on (to resolve a model, say): leave it usable.
            await db.rollback()
            raise
        # The caller outlives this request (cached for the next ones): its user leaves this
        # session now, or a rollback later in the request would expire its attributes, and every
        # later request would then try to reload them outside any session (a 500 each).
        db.expunge(caller.user)
        return caller

    credential = api_key or bearer
    caller, recalled = await outage.call(("caller", credential), authenticate, epoch=Epoch.AUTH)
    if recalled:
        # Good for this request only: cached, it would outlive the outage.
        return caller, 0.0
    if caller.valid_until is None:
        return caller, None
    return caller, (caller.valid_until - datetime.now(UTC)).total_seconds()


CallerDep = Annotated[Caller, Depends(current_caller)]


async def current_user(caller: CallerDep, db: SessionDep) -> User:
    """Return the active user behind the request's credential, as a row of this request's session.

    A remembered caller's user belongs to the request that first checked the credential; it is
    merged (without a query) so that what a route changes on it is written by this session.
    """
    if caller.user in db:
        return caller.user
    return await db.merge(caller.user, load=False)


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


async def auth_rate_limit(
    request: Request, rate_limiter: RateLimiterDep, settings: SettingsDep
) -> None:
    """Limit unauthenticated auth attempts per client address (password guessing, spraying).

    Raises:
        RateLimited: past `auth_rate_limit_per_minute`.
    """
    address = request.client.host if request.client else "unknown"
    await rate_limiter.hit(
        f"auth:{address}",
        limit=settings.auth_rate_limit_per_minute,
        window_seconds=AUTH_RATE_WINDOW_SECONDS,
    )


class PasswordsDisabled(Forbidden):
    type = "passwords-disabled"

    def __init__(self) -> None:
        super().__init__("passwords are turned off on this server; sign in with single sign-on")


async def local_passwords(settings: SettingsDep) -> None:
    """Refuse a password registration or login when local passwords are turned off.

    Raises:
        PasswordsDisabled: `local_passwords` is false.
    """
    if not settings.local_passwords:
        raise PasswordsDisabled
