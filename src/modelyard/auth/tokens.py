"""JWT access and refresh tokens: HS256 pinned, every claim required and checked."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import jwt

from modelyard.config import Settings
from modelyard.db.types import utcnow
from modelyard.errors import Unauthorized

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["exp", "iat", "sub", "type", "jti"]

TokenType = Literal["access", "refresh"]


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: uuid.UUID
    jti: uuid.UUID
    type: TokenType
    expires_at: datetime
    family_id: uuid.UUID  # the session: the login every token of it descends from
    # Access tokens only: the user's credentials version when issued (a later change of
    # password or rights ends the token).
    version: int | None = None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    claims: TokenClaims


class TokenService:
    """Sign and verify the tokens of one deployment."""

    def __init__(self, settings: Settings) -> None:
        self._key = settings.secret
        self.access_ttl = timedelta(minutes=settings.access_token_expire_minutes)
        self.refresh_ttl = timedelta(days=settings.refresh_token_expire_days)

    def issue_access(self, user_id: uuid.UUID, family_id: uuid.UUID, version: int) -> IssuedToken:
        """Sign an access token for `user_id` in session `family_id`, under the user's
        credentials `version`."""
        return self._issue(user_id, "access", self.access_ttl, family_id, version)

    def issue_refresh(self, user_id: uuid.UUID, family_id: uuid.UUID) -> IssuedToken:
        """Sign a refresh token of `family_id` (the login it descends from)."""
        return self._issue(user_id, "refresh", self.refresh_ttl, family_id, None)

    def _issue(
        self,
        user_id: uuid.UUID,
        type_: TokenType,
        ttl: timedelta,
        family_id: uuid.UUID,
        version: int | None,
    ) -> IssuedToken:
        now = utcnow()
        claims = TokenClaims(
            user_id=user_id,
            jti=uuid.uuid4(),
            type=type_,
            expires_at=now + ttl,
            family_id=family_id,
            version=version,
        )
        payload: dict[str, object] = {
            "sub": str(user_id),
            "type": type_,
            "jti": str(claims.jti),
            "iat": now,
            "exp": claims.expires_at,
            "fam": str(family_id),
        }
        if version is not None:
            payload["ver"] = version
        return IssuedToken(jwt.encode(payload, self._key, algorithm=ALGORITHM), claims)

    def verify(self, token: str, expected: TokenType) -> TokenClaims:
        """Check signature, expiry, claims and type; return the claims.

        Raises:
            Unauthorized: for any token that is not a valid, unexpired `expected` token.
        """
        try:
            # The algorithm list is pinned: a token's own `alg` header (e.g. "none") is ignored.
            payload = jwt.decode(
                token, self._key, algorithms=[ALGORITHM], options={"require": REQUIRED_CLAIMS}
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid token") from exc
        if payload.get("type") != expected:
            raise Unauthorized(f"expected a token of type {expected!r}")
        try:
            version = payload.get("ver")
            claims = TokenClaims(
                user_id=uuid.UUID(payload["sub"]),
                jti=uuid.UUID(payload["jti"]),
                type=expected,
                expires_at=datetime.fromtimestamp(payload["exp"], tz=UTC),
                family_id=uuid.UUID(payload["fam"]),
                version=version if type(version) is int else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise Unauthorized("invalid token") from exc
        # Every token names its session; an access token also the credentials version (tokens
        # from before these claims existed are refused: their holders log in again).
        if expected == "access" and claims.version is None:
            raise Unauthorized("invalid token")
        return claims
