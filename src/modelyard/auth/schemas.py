"""API types of authentication, users and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import (
    AliasChoices,
    AwareDatetime,
    EmailStr,
    Field,
    StringConstraints,
    model_validator,
)

from modelyard.auth.scopes import ALL_SCOPES, Scope
from modelyard.db.types import utcnow
from modelyard.schemas import ModelName, ReadModel, StrictModel

MIN_PASSWORD_LENGTH = 8
# Argon2 accepts any length; the cap keeps one request from buying minutes of hashing.
MAX_PASSWORD_LENGTH = 1024

Password = Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)]
FullName = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]


class UserCreate(StrictModel):
    email: EmailStr
    password: Password
    full_name: FullName | None = None


class LoginRequest(StrictModel):
    email: Annotated[str, Field(max_length=320)]
    password: Annotated[str, Field(max_length=MAX_PASSWORD_LENGTH)]


class RefreshRequest(StrictModel):
    refresh_token: Annotated[str, Field(max_length=4096)]


# A PKCE code verifier (RFC 7636 4.1): 43 to 128 unreserved characters.
CodeVerifier = Annotated[str, Field(min_length=43, max_length=128, pattern=r"^[A-Za-z0-9._~-]+$")]


class SsoTokenRequest(StrictModel):
    """The command line's one-time code from its loopback redirect, and its PKCE verifier."""

    code: Annotated[str, Field(min_length=1, max_length=128)]
    code_verifier: CodeVerifier


class SsoInfo(ReadModel):
    """How people sign in to this server."""

    enabled: bool
    name: str | None
    start_path: str | None
    local_passwords: bool


class TokenPair(ReadModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int = Field(description="seconds until the access token expires")


class UserRead(ReadModel):
    id: uuid.UUID
    email: str
    full_name: str | None
    is_active: bool
    is_admin: bool
    created_at: datetime
    updated_at: datetime


class MeUpdate(StrictModel):
    full_name: FullName | None = None
    password: Password | None = None
    current_password: Annotated[str, Field(max_length=MAX_PASSWORD_LENGTH)] | None = None


class UserAdminUpdate(StrictModel):
    is_active: bool | None = None
    is_admin: bool | None = None


SCOPES_HELP = (
    "read (GET routes), predict (predict routes, V2 model metadata), write (uploads, lifecycle, "
    "aliases, files, experiments, and every other change), admin (admin routes; admins only)"
)


class ApiKeyCreate(StrictModel):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    expires_at: AwareDatetime | None = None
    scopes: Annotated[
        list[Scope] | None,
        Field(
            min_length=1,
            max_length=len(ALL_SCOPES),
            description=f"What the key may do: {SCOPES_HELP}. Default: read and predict.",
        ),
    ] = None
    models: Annotated[
        list[ModelName] | None,
        Field(
            min_length=1,
            max_length=100,
            description="The names of the only models the key may act on (default: every "
            "model). Such a key is refused routes that do not address one of them (lists).",
        ),
    ] = None


class ApiKeyRead(ReadModel):
    id: uuid.UUID
    name: str
    prefix: str
    is_active: bool = Field(description="false once revoked or expired")
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    scopes: list[Scope]
    # From the row's `model_names`, or from this model's own output when FastAPI checks it.
    models: list[str] | None = Field(
        validation_alias=AliasChoices("models", "model_names"),
        description="the models it is limited to; null: all",
    )

    @model_validator(mode="after")
    def _expired_is_inactive(self) -> Self:
        if self.expires_at is not None and self.expires_at <= utcnow():
            self.is_active = False
        return self


class ApiKeyCreated(ReadModel):
    id: uuid.UUID
    name: str
    prefix: str
    key: str = Field(description="the secret key; shown this once only")
    created_at: datetime
    expires_at: datetime | None
    scopes: list[Scope]
    models: list[str] | None
