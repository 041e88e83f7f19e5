"""Use cases of authentication: accounts, logins, token rotation, API keys, user administration."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.auth.passwords import PasswordHasher
from modelyard.auth.schemas import (
    ApiKeyCreate,
    MeUpdate,
    UserAdminUpdate,
    UserCreate,
)
from modelyard.auth.scopes import DEFAULT_SCOPES, MissingScope, OutsideModelLimit, Scope, ordered
from modelyard.auth.tokens import TokenService
from modelyard.changes.events import Action, Events
from modelyard.db.sql import rowcount
from modelyard.db.tables import (
    ApiKey,
    RefreshToken,
    User,
)
from modelyard.db.types import utcnow
from modelyard.errors import (
    Conflict,
    Forbidden,
    ModelyardError,
    NotFound,
    Unauthorized,
    Unprocessable,
)
from modelyard.ratelimit import RateLimiter
from modelyard.schemas import PageParams

log = logging.getLogger(__name__)

API_KEY_MARKER = "myd_"
API_KEY_PREFIX_LENGTH = len(API_KEY_MARKER) + 10
LAST_USED_RESOLUTION = timedelta(minutes=1)
BAD_LOGIN = "invalid email or password"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the user, and the API key it used (None for a token) with its powers."""

    user: User
    api_key_id: uuid.UUID | None
    valid_until: datetime | None = None  # the credential's own expiry
    # The key's scopes, and the names of the models it is limited to; None: the user's full
    # rights (a password login, the dashboard), or every model.
    scopes: frozenset[str] | None = None
    models: frozenset[str] | None = None

    def require_scope(self, scope: Scope) -> None:
        """Raises MissingScope unless the caller has `scope`."""
        if self.scopes is not None and scope not in self.scopes:
            raise MissingScope(scope)

    def require(self, scope: Scope, *, model: str | None) -> None:
        """Check that the caller may act with `scope` on the model named `model`, or, with
        None, on something that is not one model (a list, a file, an experiment).

        The one decision on what an API key may do; password logins may do everything.

        Raises:
            MissingScope: the key lacks `scope`.
            OutsideModelLimit: the key is limited to models, and `model` is not one of them.
        """
        self.require_scope(scope)
        if self.models is not None and (model is None or model not in self.models):
            raise OutsideModelLimit(self.models)

    def allows(self, scope: Scope, *, model: str | None) -> bool:
        """Tell whether `require` would let the caller through."""
        try:
            self.require(scope, model=model)
        except Forbidden:
            return False
        return True


@dataclass(frozen=True, slots=True)
class FailureLimit:
    """Failed password checks allowed per account and window (login and `current_password`
    alike), counted whether or not the account exists; 0 turns it off."""

    limiter: RateLimiter
    limit: int
    window_seconds: int

    def key(self, email: str) -> str:
        return f"password-failures:{normalise_email(email)}"

    async def check(self, email: str) -> None:
        """Raises RateLimited when the account has used up its failures for this window."""
        await self.limiter.check(
            self.key(email), limit=self.limit, window_seconds=self.window_seconds
        )

    async def failed(self, email: str) -> None:
        """Count a failed password check."""
        if self.limit > 0:
            await self.limiter.add(self.key(email), window_seconds=self.window_seconds)


@dataclass(frozen=True, slots=True)
class IssuedPair:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class NewApiKey:
    row: ApiKey
    key: str


def normalise_email(email: str) -> str:
    """Return the form emails are stored and looked up in: NFKC-normalised and case-folded, so
    that a fullwidth `alice@example.com` and `ALICE@example.com` are `alice@example.com`."""
    return unicodedata.normalize("NFKC", email.strip()).casefold()


# --- accounts and sessions ----------------------------------------------------------------------


async def register_user(
    db: AsyncSession,
    data: UserCreate,
    *,
    passwords: PasswordHasher,
    events: Events,
    is_admin: bool = False,
) -> User:
    """Create an account.

    Raises:
        Conflict: the email is taken.
    """
    user = User(
        email=normalise_email(data.email),
        password_hash=await passwords.hash(data.password),
        full_name=data.full_name,
        is_admin=is_admin,
    )
    db.add(user)
    try:
        await db.commit()
    except IntegrityError as exc:
        await db.rollback()
        raise Conflict("an account with this email already exists") from exc
    log.info("user_registered", extra={"user_id": str(user.id)})
    await events.record(_user_action("user.registered", user, is_admin=is_admin))
    return user


def _user_action(
    name: str,
    user: User | None,
    *,
    by_self: bool = False,
    outcome: str = "success",
    **details: object,
) -> Action:
    """The action `name` on an account (None: one that does not exist); `by_self`: the account
    acted itself (a sign-in, before the request has a caller)."""
    user_id = None if user is None else user.id
    return Action(
        name=name,
        target_type="user",
        target_id=None if user_id is None else str(user_id),
        owner_id=user_id,
        actor_user_id=user_id if by_self else None,
        outcome=outcome,
        details=details,
    )


async def find_user_by_email(db: AsyncSession, email: str) -> User | None:
    """Return the user with `email`, if any."""
    result = await db.execute(select(User).where(User.email == normalise_email(email)))
    return result.scalar_one_or_none()


async def login(
    db: AsyncSession,
    email: str,
    password: str,
    *,
    passwords: PasswordHasher,
    tokens: TokenService,
    failures: FailureLimit,
    events: Events,
) -> IssuedPair:
    """Check a password and start a new session (a new refresh token family).

    Raises:
        RateLimited, Unauthorized: as `check_password`.
    """
    user = await check_password(
        db, email, password, passwords=passwords, failures=failures, events=events
    )
    pair = _issue_pair(db, user, uuid.uuid4(), tokens)
    await db.commit()
    log.info("user_logged_in", extra={"user_id": str(user.id)})
    return pair


async def check_password(
    db: AsyncSession,
    email: str,
    password: str,
    *,
    passwords: PasswordHasher,
    failures: FailureLimit,
    events: Events,
    sign_in: bool = True,
) -> User:
    """Return the active user with this email and password (rehashed if due; the caller commits).

    A sign-in, and every refused one, is recorded: `auth.login`, `auth.login_failed` (on the
    account the email names, if any; the email itself is not recorded). With `sign_in` false
    (a signed-in person confirming an action with the password) a success records nothing: the
    action it confirms is the record.

    Raises:
        RateLimited: the account had too many failed attempts in the window (counted for
            unknown emails too, so the limit tells nothing about which accounts exist).
        Unauthorized: the same answer for an unknown email, a wrong password and a disabled
            account, so that the answer tells nothing about which accounts exist.
    """
    user = await find_user_by_email(db, email)
    try:
        await failures.check(email)
    except ModelyardError:
        await _login_failed(events, user, "too many failures")
        raise
    # Verified even when the user is unknown (against a dummy hash): same time, same answer.
    valid = await passwords.verify(user.password_hash if user else None, password)
    if user is None or not valid or not user.is_active:
        await failures.failed(email)
        reason = "unknown email" if user is None else "wrong password" if not valid else "inactive"
        await _login_failed(events, user, reason)
        raise Unauthorized(BAD_LOGIN)
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = await passwords.hash(password)
    if sign_in:
        await events.record(_user_action("auth.login", user, by_self=True))
    return user


async def _login_failed(events: Events, user: User | None, reason: str) -> None:
    await events.record(_user_action("auth.login_failed", user, outcome="failure", reason=reason))


def issue_session(db: AsyncSession, user: User, *, tokens: TokenService) -> IssuedPair:
    """Start a new session (a new refresh token family) for a user who signed in some other
    way than a password (single sign-on); the caller commits."""
    return _issue_pair(db, user, uuid.uuid4(), tokens)


def _issue_pair(
    db: AsyncSession, user: User, family_id: uuid.UUID, tokens: TokenService
) -> IssuedPair:
    access = tokens.issue_access(user.id, family_id, user.credentials_version)
    refresh = tokens.issue_refresh(user.id, family_id)
    db.add(
        RefreshToken(
            id=refresh.claims.jti,
            user_id=user.id,
            family_id=family_id,
            expires_at=refresh.claims.expires_at,
        )
    )
    return IssuedPair(
        access_token=access.token,
        refresh_token=refresh.token,
        expires_in=int(tokens.access_ttl.total_seconds()),
    )


async def rotate_refresh_token(
    db: AsyncSession, refresh_token: str, *, tokens: TokenService, events: Events
) -> IssuedPair:
    """Spend a refresh token and return a new pair in the same family.

    Raises:
        Unauthorized: the token is invalid, expired, revoked or already spent. Presenting a spent
            token means it was stolen or replayed, so its whole family is revoked.
    """
    claims = tokens.verify(refresh_token, "refresh")
    now = utcnow()
    # One conditional UPDATE spends the token: of two concurrent refreshes only one can win.
    spent = await db.execute(
        update(RefreshToken)
        .where(
            RefreshToken.id == claims.jti,
            RefreshToken.used_at.is_(None),
            RefreshToken.revoked_at.is_(None),
        )
        .values(used_at=now)
    )
    if rowcount(spent) != 1:
        row = await db.get(RefreshToken, claims.jti)
        # Spent means replayed (stolen, or a client bug): end the session. A token revoked by
        # logout, a password change or deactivation is simply no longer valid.
        if row is not None and row.used_at is not None:
            await _revoke_family(db, claims.family_id, now)
            await db.commit()
            await events.record(
                Action(
                    name="auth.refresh_token_reused",
                    target_type="user",
                    target_id=str(claims.user_id),
                    owner_id=claims.user_id,
                    outcome="failure",
                    details={"session": str(claims.family_id)},
                )
            )
            log.warning(
                "refresh_token_reused",
                extra={"user_id": str(claims.user_id), "family_id": str(claims.family_id)},
            )
            raise Unauthorized("refresh token already used; the session has been revoked")
        raise Unauthorized("invalid token")
    user = await db.get(User, claims.user_id)
    if user is None or not user.is_active:
        await db.rollback()
        raise Unauthorized("invalid token")
    pair = _issue_pair(db, user, claims.family_id, tokens)
    await db.commit()
    return pair


async def logout(
    db: AsyncSession, user: User, refresh_token: str, *, tokens: TokenService, events: Events
) -> None:
    """End the session a refresh token belongs to: its refresh and access tokens.

    Raises:
        Unauthorized: the token is not a valid refresh token of `user`.
    """
    claims = tokens.verify(refresh_token, "refresh")
    if claims.user_id != user.id:
        raise Unauthorized("invalid token")
    await _revoke_family(db, claims.family_id, utcnow())
    await db.commit()
    await events.credentials_changed(user_id=user.id)
    await events.record(_user_action("auth.logout", user, session=str(claims.family_id)))


async def logout_everywhere(db: AsyncSession, user: User, *, events: Events) -> None:
    """End every session of `user`, this one included (API keys are left alone)."""
    await _end_credentials(db, user, api_keys=False)
    await db.commit()
    log.info("user_logged_out_everywhere", extra={"user_id": str(user.id)})
    await events.credentials_changed(user_id=user.id)
    await events.record(_user_action("auth.logout_all", user))


async def _revoke_family(db: AsyncSession, family_id: uuid.UUID, now: datetime) -> None:
    await db.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def _end_credentials(db: AsyncSession, user: User, *, api_keys: bool) -> None:
    """End what `user` was issued before now: every access token (a new credentials version),
    every session's refresh tokens and, with `api_keys`, every API key. The caller commits."""
    now = utcnow()
    user.credentials_version += 1
    user.updated_at = now
    await db.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    if api_keys:
        await db.execute(
            update(ApiKey)
            .where(ApiKey.user_id == user.id, ApiKey.is_active.is_(True))
            .values(is_active=False, revoked_at=now)
        )


async def authenticate_access_token(
    db: AsyncSession, token: str, *, tokens: TokenService
) -> tuple[User, datetime]:
    """Return the active user an access token names, and when the token expires.

    Raises:
        Unauthorized: invalid token; the user is gone or deactivated; the token's session was
            ended (logout, reuse of a refresh token) or its credentials version was (a change
            of password or rights since it was issued).
    """
    claims = tokens.verify(token, "access")
    session_ended = exists().where(
        RefreshToken.family_id == claims.family_id, RefreshToken.revoked_at.is_not(None)
    )
    row = (await db.execute(select(User, session_ended).where(User.id == claims.user_id))).first()
    if row is None or not row[0].is_active:
        raise Unauthorized("invalid token")
    user, ended = row
    if ended or user.credentials_version != claims.version:
        raise Unauthorized("token revoked")
    return user, claims.expires_at


async def update_me(
    db: AsyncSession,
    user: User,
    data: MeUpdate,
    *,
    passwords: PasswordHasher,
    failures: FailureLimit,
    events: Events,
) -> User:
    """Change the caller's name or password.

    A new password ends every credential issued before it: every session (this one included)
    and every API key, so that whoever held one of them is out.

    Raises:
        Unprocessable: a new password without `current_password`.
        RateLimited: too many wrong `current_password` guesses (shared with login's limit).
        Forbidden: `current_password` is wrong.
    """
    if data.password is not None:
        if data.current_password is None:
            raise Unprocessable("changing the password needs current_password")
        await failures.check(user.email)
        if not await passwords.verify(user.password_hash, data.current_password):
            await failures.failed(user.email)
            raise Forbidden("current_password is incorrect")
        user.password_hash = await passwords.hash(data.password)
        await _end_credentials(db, user, api_keys=True)
        log.info("password_changed", extra={"user_id": str(user.id)})
    if "full_name" in data.model_fields_set:
        user.full_name = data.full_name
    user.updated_at = utcnow()
    await db.commit()
    # Also for a new name: remembered callers hold the user row as it was.
    await events.credentials_changed(user_id=user.id)
    if data.password is not None:
        await events.record(_user_action("user.password_changed", user))
    if "full_name" in data.model_fields_set:
        await events.record(_user_action("user.updated", user, fields=["full_name"]))
    return user


# --- API keys -----------------------------------------------------------------------------------


def _hash_key(key: str) -> str:
    # SHA-256 suffices: the key carries 256 random bits, so no dictionary can guess it.
    return hashlib.sha256(key.encode()).hexdigest()


async def create_api_key(
    db: AsyncSession, caller: Caller, data: ApiKeyCreate, *, events: Events
) -> NewApiKey:
    """Make a key for the caller; the secret is returned here and never stored.

    Without `scopes` the key gets `DEFAULT_SCOPES`; without `models`, every model.

    Raises:
        Forbidden: the caller used an API key: keys are made from a signed-in session only, so
            that a leaked key cannot mint others that outlive its revocation; or a non-admin
            asked for the `admin` scope.
        Unprocessable: `expires_at` is in the past.
    """
    if caller.api_key_id is not None:
        raise Forbidden("API keys can only be created from a signed-in session, not with a key")
    user = caller.user
    scopes = ordered(DEFAULT_SCOPES if data.scopes is None else data.scopes)
    if Scope.ADMIN in scopes and not user.is_admin:
        raise Forbidden("only an admin can create a key with the `admin` scope")
    if data.expires_at is not None and data.expires_at <= utcnow():
        raise Unprocessable("expires_at must be in the future")
    prefix = API_KEY_MARKER + secrets.token_hex((API_KEY_PREFIX_LENGTH - len(API_KEY_MARKER)) // 2)
    key = f"{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        user_id=user.id,
        name=data.name,
        prefix=prefix,
        key_hash=_hash_key(key),
        expires_at=data.expires_at,
        scopes=scopes,
        model_names=None if data.models is None else sorted(set(data.models)),
    )
    db.add(row)
    await db.commit()
    log.info("api_key_created", extra={"user_id": str(user.id), "api_key_id": str(row.id)})
    await events.record(
        _key_action(
            "api_key.created",
            row,
            scopes=row.scopes,
            models=row.model_names,
            expires_at=None if row.expires_at is None else row.expires_at.isoformat(),
        )
    )
    return NewApiKey(row=row, key=key)


def _key_action(name: str, row: ApiKey, **details: object) -> Action:
    """The action `name` on an API key (its name and public prefix; never the secret)."""
    return Action(
        name=name,
        target_type="api_key",
        target_id=str(row.id),
        owner_id=row.user_id,
        details={"name": row.name, "prefix": row.prefix, **details},
    )


async def list_api_keys(db: AsyncSession, user: User, page: PageParams) -> tuple[list[ApiKey], int]:
    """Return a page of the caller's keys, newest first, and their total."""
    where = ApiKey.user_id == user.id
    total = await db.scalar(select(func.count()).select_from(ApiKey).where(where))
    rows = await db.scalars(
        select(ApiKey)
        .where(where)
        .order_by(ApiKey.created_at.desc(), ApiKey.id)
        .limit(page.limit)
        .offset(page.offset)
    )
    return list(rows), total or 0


async def revoke_api_key(
    db: AsyncSession, user: User, key_id: uuid.UUID, *, events: Events
) -> None:
    """Stop a key of the caller's from working, on every worker at once.

    Raises:
        NotFound: no such key among the caller's.
    """
    row = await db.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user.id))
    if row is None:
        raise NotFound("API key not found")
    revoked = row.is_active
    if revoked:
        row.is_active = False
        row.revoked_at = utcnow()
        await db.commit()
    # Announced even if it was revoked already: not even an outage may bring it back.
    await events.credentials_changed(user_id=user.id, api_key_id=key_id)
    if revoked:
        await events.record(_key_action("api_key.revoked", row))


def looks_like_api_key(credential: str) -> bool:
    """Tell an API key from a JWT (a JWT starts with `eyJ`, its base64 JSON header)."""
    return credential.startswith(API_KEY_MARKER)


async def authenticate_api_key(db: AsyncSession, key: str) -> Caller:
    """Return the caller of a valid, unexpired, unrevoked key: its active owner, the key's id,
    expiry, scopes and models.

    Raises:
        Unauthorized: for any other key.
    """
    prefix = key[:API_KEY_PREFIX_LENGTH]
    if len(key) <= API_KEY_PREFIX_LENGTH or key[API_KEY_PREFIX_LENGTH] != "_":
        raise Unauthorized("invalid API key")
    row = await db.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    # Constant-time comparison, and a comparison even when the prefix is unknown.
    expected = row.key_hash if row is not None else "0" * 64
    if not hmac.compare_digest(expected, _hash_key(key)) or row is None:
        raise Unauthorized("invalid API key")
    now = utcnow()
    if not row.is_active or (row.expires_at is not None and row.expires_at <= now):
        raise Unauthorized("API key revoked or expired")
    user = await db.get(User, row.user_id)
    if user is None or not user.is_active:
        raise Unauthorized("invalid API key")
    models = None if row.model_names is None else frozenset(row.model_names)
    caller = Caller(user, row.id, row.expires_at, frozenset(row.scopes), models)
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        # At most one write a minute per key: a busy key must not turn every request into one.
        await db.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        await db.commit()
    return caller


# --- administration -----------------------------------------------------------------------------


async def list_users(db: AsyncSession, page: PageParams) -> tuple[list[User], int]:
    """Return a page of all users, oldest first, and their total."""
    total = await db.scalar(select(func.count()).select_from(User))
    rows = await db.scalars(
        select(User).order_by(User.created_at, User.id).limit(page.limit).offset(page.offset)
    )
    return list(rows), total or 0


async def get_user(db: AsyncSession, user_id: uuid.UUID) -> User:
    """Return a user, for an admin.

    Raises:
        NotFound: no such user.
    """
    user = await db.get(User, user_id)
    if user is None:
        raise NotFound("user not found")
    return user


async def count_active_api_keys(db: AsyncSession, user_id: uuid.UUID) -> int:
    """Count the user's API keys that still work (neither revoked nor expired)."""
    now = utcnow()
    count = await db.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(
            ApiKey.user_id == user_id,
            ApiKey.is_active.is_(True),
            (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > now),
        )
    )
    return int(count or 0)


async def update_user(
    db: AsyncSession, admin: User, user_id: uuid.UUID, data: UserAdminUpdate, *, events: Events
) -> User:
    """Activate, deactivate, promote or demote a user.

    Any change of rights ends every credential the user was issued before it (sessions and API
    keys): a deactivated user is out at once, and a promoted or demoted one signs in again
    rather than keep tokens minted under other rights.

    Raises:
        NotFound: no such user.
        Conflict: an admin tried to deactivate or demote themselves (it would lock them out).
        Forbidden: the admin lost their own rights meanwhile (two admins demoting each other
            at once: one of them wins, and an active admin always remains).
    """
    removes_an_admin = data.is_admin is False or data.is_active is False
    if removes_an_admin:
        await lock_admins(db, admin.id)
    user = await db.get(User, user_id, populate_existing=True)
    if user is None:
        await db.rollback()
        raise NotFound("user not found")
    if user.id == admin.id and removes_an_admin:
        await db.rollback()
        raise Conflict("admins cannot deactivate or demote themselves")
    if removes_an_admin:
        actor = (
            await db.execute(select(User.is_admin, User.is_active).where(User.id == admin.id))
        ).one_or_none()
        if actor is None or not (actor.is_admin and actor.is_active):
            await db.rollback()
            raise Forbidden("you are no longer an active administrator")
    changed = (data.is_admin is not None and data.is_admin != user.is_admin) or (
        data.is_active is not None and data.is_active != user.is_active
    )
    if data.is_admin is not None:
        user.is_admin = data.is_admin
    if data.is_active is not None:
        user.is_active = data.is_active
    if changed:
        await _end_credentials(db, user, api_keys=True)
    user.updated_at = utcnow()
    await db.commit()
    log.info(
        "user_updated",
        extra={"user_id": str(user.id), "by": str(admin.id), **data.model_dump(exclude_none=True)},
    )
    if changed:
        await events.credentials_changed(user_id=user.id)
        await events.record(
            _user_action("user.updated", user, **data.model_dump(exclude_none=True))
        )
    return user


async def lock_admins(db: AsyncSession, acting: uuid.UUID) -> None:
    """Serialise the changes that could leave no active admin (demotions, deactivations,
    erasures) until the transaction ends; what is read after it is the latest commit.

    PostgreSQL: the active admins' rows, always in the same order (two such changes queue
    instead of deadlocking). SQLite: a write first (a no-op on `acting`'s row), which takes the
    database's one write lock.
    """
    await db.execute(
        select(User.id).where(User.is_admin, User.is_active).order_by(User.id).with_for_update()
    )
    await db.execute(
        update(User)
        .where(User.id == acting)
        .values(updated_at=User.updated_at)
        .execution_options(synchronize_session=False)
    )


async def lock_for_erasure(db: AsyncSession, user_id: uuid.UUID) -> None:
    """Begin an account's erasure: lock the user so that what is read next is all it has.

    Leaves the transaction open (the caller erases and commits); rolls it back when it raises.

    Raises:
        NotFound: no such user.
        Conflict: the user is the last active admin (nobody could administer the platform).
    """
    # Erasures, demotions and deactivations queue here: two admins erasing (or demoting) each
    # other at once cannot both see the other as the admin who remains.
    await lock_admins(db, user_id)
    # A write first: on SQLite it takes the database's one write lock before anything below is
    # read (so the reads see the latest commit and no other writer comes between), on
    # PostgreSQL the user's row lock; and it tells whether the user exists.
    bumped = await db.execute(
        update(User)
        .where(User.id == user_id)
        .values(credentials_version=User.credentials_version + 1)
        .execution_options(synchronize_session=False)
    )
    if rowcount(bumped) != 1:
        await db.rollback()
        raise NotFound("user not found")
    # PostgreSQL: the row's strongest lock. It waits for the transactions that are adding rows
    # under the user (an upload, a key, a login) and holds off new ones until the user is gone
    # (their foreign key then fails), so what is read after it is all the user has.
    await db.execute(select(User.id).where(User.id == user_id).with_for_update())
    user = (await db.execute(select(User.is_admin, User.is_active).where(User.id == user_id))).one()
    if user.is_admin and user.is_active:
        others = await db.scalar(
            select(func.count())
            .select_from(User)
            .where(User.is_admin, User.is_active, User.id != user_id)
        )
        if not others:
            await db.rollback()
            raise Conflict("the last active admin cannot be erased; make another admin first")


async def delete_user(db: AsyncSession, user_id: uuid.UUID) -> None:
    """Delete the user row (no commit); whatever names the user goes with it by the schema's
    `ON DELETE CASCADE` (foreign keys are on for SQLite connections too)."""
    await db.execute(delete(User).where(User.id == user_id))


async def ensure_admin(
    db: AsyncSession,
    email: str,
    password: str,
    *,
    passwords: PasswordHasher,
    events: Events,
    promote_existing: bool = False,
) -> tuple[User, bool]:
    """Create an active admin with this email and password; with `promote_existing`, make an
    existing account that admin instead.

    Whoever registered the email first owns that account: promoting it unasked would hand an
    attacker who pre-registered the operator's address the admin rights. A promotion sets the
    password and ends every credential the account held (sessions and API keys).

    Returns the user and whether it was created.

    Raises:
        Conflict: the account exists, is not an admin, and `promote_existing` is not set.
    """
    user = await find_user_by_email(db, email)
    if user is None:
        created = await register_user(
            db,
            UserCreate(email=email, password=password),
            passwords=passwords,
            events=events,
            is_admin=True,
        )
        return created, True
    if not user.is_admin and not promote_existing:
        raise Conflict(
            "an account with this email exists and is not an admin; promote it explicitly "
            "(--promote-existing) only if you know who registered it"
        )
    user.is_admin = True
    user.is_active = True
    user.password_hash = await passwords.hash(password)
    await _end_credentials(db, user, api_keys=True)
    await db.commit()
    log.info("user_promoted_to_admin", extra={"user_id": str(user.id)})
    await events.credentials_changed(user_id=user.id)
    await events.record(_user_action("user.updated", user, is_admin=True, is_active=True))
    return user, False
