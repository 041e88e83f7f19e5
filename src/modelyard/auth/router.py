"""Routes of `/api/v1/auth` and `/api/v1/api-keys` (erasure and `/api/v1/users`: accounts)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Depends, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from modelyard.auth import service, sso
from modelyard.auth.deps import (
    CallerDep,
    CurrentUser,
    FailuresDep,
    PasswordsDep,
    TokensDep,
    auth_rate_limit,
    local_passwords,
)
from modelyard.auth.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    LoginRequest,
    MeUpdate,
    RefreshRequest,
    SsoInfo,
    SsoTokenRequest,
    TokenPair,
    UserCreate,
    UserRead,
)
from modelyard.changes.deps import EventsDep
from modelyard.db.deps import SessionDep
from modelyard.db.tables import User
from modelyard.deps import SettingsDep
from modelyard.edge.routing import make_router
from modelyard.errors import UnsupportedMediaType
from modelyard.schemas import Page, PageDep, make_page

auth_router = make_router(prefix="/api/v1/auth", tags=["auth"])
RATE_LIMITED = [Depends(auth_rate_limit)]
PASSWORDS = [Depends(local_passwords), *RATE_LIMITED]
api_keys_router = make_router(prefix="/api/v1/api-keys", tags=["api keys"])

_LOGIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": LoginRequest.model_json_schema()},
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {
                        "username": {"type": "string", "description": "the email"},
                        "password": {"type": "string", "format": "password"},
                    },
                }
            },
        },
    }
}


@auth_router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=UserRead,
    dependencies=PASSWORDS,
)
async def register(
    body: UserCreate, db: SessionDep, events: EventsDep, passwords: PasswordsDep
) -> User:
    """Create an account."""
    return await service.register_user(db, body, passwords=passwords, events=events)


@auth_router.post(
    "/login", response_model=TokenPair, openapi_extra=_LOGIN_BODY, dependencies=PASSWORDS
)
async def login(
    request: Request,
    db: SessionDep,
    events: EventsDep,
    passwords: PasswordsDep,
    tokens: TokensDep,
    failures: FailuresDep,
) -> TokenPair:
    """Exchange email and password for tokens: JSON, or the OAuth2 password form of /docs."""
    credentials = await _login_credentials(request)
    pair = await service.login(
        db,
        credentials.email,
        credentials.password,
        passwords=passwords,
        tokens=tokens,
        failures=failures,
        events=events,
    )
    return TokenPair.model_validate(pair)


async def _login_credentials(request: Request) -> LoginRequest:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.form()
            fields = {"email": form.get("username"), "password": form.get("password")}
            return LoginRequest.model_validate({k: v for k, v in fields.items() if v is not None})
        if content_type in ("", "application/json"):
            return LoginRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False)]
        ) from exc
    raise UnsupportedMediaType("send JSON or an OAuth2 password form")


@auth_router.get("/sso", response_model=SsoInfo)
async def sso_info(settings: SettingsDep) -> SsoInfo:
    """Say whether single sign-on is on (and where a browser starts it), and whether passwords
    are accepted."""
    return SsoInfo(
        enabled=settings.sso_enabled,
        name=settings.oidc_display_name if settings.sso_enabled else None,
        start_path="/auth/sso/start" if settings.sso_enabled else None,
        local_passwords=settings.local_passwords,
    )


@auth_router.post("/sso/token", response_model=TokenPair, dependencies=RATE_LIMITED)
async def sso_token(
    body: SsoTokenRequest, db: SessionDep, events: EventsDep, tokens: TokensDep
) -> TokenPair:
    """Spend the one-time code a single sign-on gave the command line's loopback redirect,
    with the PKCE verifier of the challenge it started with, for tokens."""
    pair = await sso.redeem_handoff(db, body.code, body.code_verifier, tokens=tokens, events=events)
    return TokenPair.model_validate(pair)


@auth_router.post("/refresh", response_model=TokenPair, dependencies=RATE_LIMITED)
async def refresh(
    body: RefreshRequest, db: SessionDep, events: EventsDep, tokens: TokensDep
) -> TokenPair:
    """Spend a refresh token for a new pair; replaying a spent one revokes the session."""
    pair = await service.rotate_refresh_token(db, body.refresh_token, tokens=tokens, events=events)
    return TokenPair.model_validate(pair)


@auth_router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    body: RefreshRequest, user: CurrentUser, db: SessionDep, events: EventsDep, tokens: TokensDep
) -> None:
    """End the session the refresh token belongs to: its refresh and access tokens."""
    await service.logout(db, user, body.refresh_token, tokens=tokens, events=events)


@auth_router.post("/logout-all", status_code=status.HTTP_204_NO_CONTENT)
async def logout_all(user: CurrentUser, db: SessionDep, events: EventsDep) -> None:
    """End every session of the caller, this one included (API keys keep working)."""
    await service.logout_everywhere(db, user, events=events)


@auth_router.get("/me", response_model=UserRead)
async def me(user: CurrentUser) -> User:
    """Return the caller."""
    return user


@auth_router.patch("/me", response_model=UserRead)
async def update_me(
    body: MeUpdate,
    user: CurrentUser,
    db: SessionDep,
    events: EventsDep,
    passwords: PasswordsDep,
    failures: FailuresDep,
) -> User:
    """Change the caller's name or password (the password needs `current_password`); a new
    password ends every session, this one included, and revokes every API key."""
    return await service.update_me(
        db, user, body, passwords=passwords, failures=failures, events=events
    )


@api_keys_router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
async def create_api_key(
    body: ApiKeyCreate, caller: CallerDep, db: SessionDep, events: EventsDep
) -> ApiKeyCreated:
    """Make an API key (from a signed-in session, not with another key); its secret is in this
    answer only."""
    new = await service.create_api_key(db, caller, body, events=events)
    return ApiKeyCreated(
        id=new.row.id,
        name=new.row.name,
        prefix=new.row.prefix,
        key=new.key,
        created_at=new.row.created_at,
        expires_at=new.row.expires_at,
        scopes=new.row.scopes,
        models=new.row.model_names,
    )


@api_keys_router.get("", response_model=Page[ApiKeyRead])
async def list_api_keys(user: CurrentUser, db: SessionDep, page: PageDep) -> Page[ApiKeyRead]:
    """List the caller's API keys (never their secrets)."""
    rows, total = await service.list_api_keys(db, user, page)
    return make_page(ApiKeyRead, rows, total, page)


@api_keys_router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(
    key_id: uuid.UUID, user: CurrentUser, db: SessionDep, events: EventsDep
) -> None:
    """Revoke one of the caller's API keys; it stops working at once."""
    await service.revoke_api_key(db, user, key_id, events=events)
