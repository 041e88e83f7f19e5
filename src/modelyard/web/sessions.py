"""Browser sessions of the dashboard: a random cookie secret, checked server-side on each request.

The cookie holds only a random secret; the server keeps its SHA-256 in `web_sessions`, with the
user's credentials version when it started and a CSRF token. A session ends at sign-out, at its
expiry, and as soon as the user's credentials version moves on: a password change, logout
everywhere, deactivation or any change of rights (auth.service raises the version for all of
them), so an open dashboard stops working on its next request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.db.tables import User, WebSession
from modelyard.db.types import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StartedSession:
    row: WebSession
    token: str  # the cookie value; never stored


def _hash(token: str) -> str:
    # SHA-256 suffices: the token carries 256 random bits.
    return hashlib.sha256(token.encode()).hexdigest()


async def start_session(db: AsyncSession, user: User, *, lifetime: timedelta) -> StartedSession:
    """Open a browser session for `user` and commit; the token goes into the cookie.

    The user's ended sessions (expired or signed out) are deleted on the way: the table holds
    about as many rows as there are live sessions.
    """
    token = secrets.token_urlsafe(32)
    now = utcnow()
    await db.execute(
        delete(WebSession).where(
            WebSession.user_id == user.id,
            or_(WebSession.expires_at <= now, WebSession.revoked_at.is_not(None)),
        )
    )
    row = WebSession(
        user_id=user.id,
        token_hash=_hash(token),
        csrf_token=secrets.token_urlsafe(32),
        credentials_version=user.credentials_version,
        created_at=now,
        expires_at=now + lifetime,
    )
    db.add(row)
    await db.commit()
    log.info("web_session_started", extra={"user_id": str(user.id)})
    return StartedSession(row=row, token=token)


async def find_session(db: AsyncSession, token: str) -> tuple[WebSession, User] | None:
    """Return the live session a cookie names and its user, or None if it has ended.

    Ended: unknown, signed out, expired, the user gone or deactivated, or the user's credentials
    version changed since the session began. One indexed query.
    """
    if not token or len(token) > 128:
        return None
    row = (
        await db.execute(
            select(WebSession, User)
            .join(User, User.id == WebSession.user_id)
            .where(WebSession.token_hash == _hash(token))
        )
    ).first()
    if row is None:
        return None
    session, user = row
    if (
        session.revoked_at is not None
        or session.expires_at <= utcnow()
        or not user.is_active
        or user.credentials_version != session.credentials_version
    ):
        return None
    return session, user


async def end_session(db: AsyncSession, session: WebSession) -> None:
    """Sign a browser out: its session stops working at once."""
    await db.execute(
        update(WebSession)
        .where(WebSession.id == session.id, WebSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    await db.commit()
    log.info("web_session_ended", extra={"user_id": str(session.user_id)})


def csrf_matches(expected: str, given: str | None) -> bool:
    """Compare a form's CSRF token with the session's in constant time."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
