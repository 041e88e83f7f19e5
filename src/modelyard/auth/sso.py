"""Use cases of single sign-on: the account an OpenID identity signs in to, and the one-time
codes that hand a sign-in to the command line.

An identity is its issuer and subject, never its email: an email can be reassigned at the
provider, and a provider account with someone's email must not become their account here. A
first sign-in creates the account; when a local account already has that email it is refused,
unless `oidc_link_verified_email` is on and the provider says the email is verified.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.auth import service
from modelyard.auth.oidc import Identity, pkce_challenge
from modelyard.auth.tokens import TokenService
from modelyard.changes.events import Action, Events
from modelyard.db.sql import rowcount
from modelyard.db.tables import SsoHandoff, SsoIdentity, User
from modelyard.db.types import utcnow
from modelyard.errors import Conflict, Forbidden, Unauthorized

log = logging.getLogger(__name__)

# Stored as the password hash of accounts made by single sign-on: not an Argon2 hash, so no
# password ever matches it.
NO_PASSWORD = "!sso"  # noqa: S105 - a marker, not a secret
HANDOFF_TTL = timedelta(minutes=2)


class SsoRefused(Forbidden):
    """A verified identity that may not sign in (no usable email, an account it may not take)."""

    type = "sso-refused"


async def sign_in(
    db: AsyncSession, identity: Identity, *, link_verified_email: bool, events: Events
) -> User:
    """Return the active account `identity` signs in to, creating it on a first sign-in, and
    commit (the identity's email and groups are refreshed).

    Raises:
        SsoRefused: the account is deactivated; a first sign-in without an email or with one
            the provider says is unverified; or an existing local account has the email and
            linking is off (or the email is not verified).
        Conflict: the same person's first sign-in ran twice at once (the other one won).
    """
    row = (
        await db.execute(
            select(SsoIdentity, User)
            .join(User, User.id == SsoIdentity.user_id)
            .where(SsoIdentity.issuer == identity.issuer, SsoIdentity.subject == identity.subject)
        )
    ).first()
    now = utcnow()
    if row is not None:
        found, user = row
        if not user.is_active:
            raise SsoRefused("this account is deactivated; ask an administrator")
        found.email, found.groups, found.last_sign_in_at = identity.email, identity.groups, now
        await db.commit()
        await events.record(_action("auth.login", user, by_self=True))
        return user
    linked = await _first_sign_in_account(db, identity, link_verified_email=link_verified_email)
    created = linked is None
    if linked is None:
        assert identity.email is not None  # noqa: S101 - checked by _first_sign_in_account
        linked = User(
            email=service.normalise_email(identity.email),
            password_hash=NO_PASSWORD,
            full_name=identity.name,
        )
        db.add(linked)
        await db.flush()
    user = linked
    db.add(
        SsoIdentity(
            user_id=user.id,
            issuer=identity.issuer,
            subject=identity.subject,
            email=identity.email,
            groups=identity.groups,
            created_at=now,
            last_sign_in_at=now,
        )
    )
    try:
        await db.commit()
    except IntegrityError as exc:
        await db.rollback()
        raise Conflict("this sign-in is already under way; try again") from exc
    log.info("sso_identity_added", extra={"user_id": str(user.id), "new_account": created})
    if created:
        await events.record(_action("user.registered", user, is_admin=False))
    else:
        await events.record(_action("user.sso_linked", user))
    await events.record(_action("auth.login", user, by_self=True))
    return user


async def _first_sign_in_account(
    db: AsyncSession, identity: Identity, *, link_verified_email: bool
) -> User | None:
    """Return the local account a first sign-in links to, or None to create one."""
    if identity.email is None:
        raise SsoRefused(
            "the identity provider did not share an email address; allow the `email` scope"
        )
    if identity.email_verified is False:
        raise SsoRefused("the identity provider has not verified this email address")
    existing = await service.find_user_by_email(db, identity.email)
    if existing is None:
        return None
    if link_verified_email and identity.email_verified is True and existing.is_active:
        return existing
    raise SsoRefused(
        "an account with this email already exists here; sign in with its password, or ask an "
        "administrator to allow linking single sign-on to existing accounts"
    )


def _action(name: str, user: User, *, by_self: bool = False, **details: object) -> Action:
    return Action(
        name=name,
        target_type="user",
        target_id=str(user.id),
        owner_id=user.id,
        actor_user_id=user.id if by_self else None,
        details={"method": "sso", **details},
    )


# --- handing a sign-in to the command line ------------------------------------------------------


def _hash(code: str) -> str:
    # SHA-256 suffices: the code carries 256 random bits.
    return hashlib.sha256(code.encode()).hexdigest()


async def create_handoff(db: AsyncSession, user: User, *, code_challenge: str) -> str:
    """Return a one-time code for `user`'s command line, bound to its PKCE challenge, and commit.

    Expired handoffs are deleted on the way.
    """
    now = utcnow()
    await db.execute(delete(SsoHandoff).where(SsoHandoff.expires_at <= now))
    code = secrets.token_urlsafe(32)
    db.add(
        SsoHandoff(
            code_hash=_hash(code),
            user_id=user.id,
            code_challenge=code_challenge,
            created_at=now,
            expires_at=now + HANDOFF_TTL,
        )
    )
    await db.commit()
    return code


async def redeem_handoff(
    db: AsyncSession, code: str, code_verifier: str, *, tokens: TokenService, events: Events
) -> service.IssuedPair:
    """Spend a one-time code with the PKCE verifier of its challenge; start a session.

    Raises:
        Unauthorized: unknown, spent or expired code, a verifier that does not match (the code
            is spent all the same: one try), or a deactivated account.
    """
    now = utcnow()
    # One conditional UPDATE spends the code: of two concurrent redemptions only one wins.
    spent = await db.execute(
        update(SsoHandoff)
        .where(
            SsoHandoff.code_hash == _hash(code),
            SsoHandoff.used_at.is_(None),
            SsoHandoff.expires_at > now,
        )
        .values(used_at=now)
    )
    if rowcount(spent) != 1:
        await db.rollback()
        raise Unauthorized("invalid, used or expired sign-in code")
    handoff = await db.scalar(select(SsoHandoff).where(SsoHandoff.code_hash == _hash(code)))
    assert handoff is not None  # noqa: S101 - just updated
    challenge_matches = hmac.compare_digest(
        pkce_challenge(code_verifier).encode(), handoff.code_challenge.encode()
    )
    user = await db.get(User, handoff.user_id)
    if not challenge_matches or user is None or not user.is_active:
        await db.commit()
        raise Unauthorized("invalid, used or expired sign-in code")
    pair = service.issue_session(db, user, tokens=tokens)
    await db.commit()
    log.info("sso_handoff_redeemed", extra={"user_id": str(user.id)})
    return pair
