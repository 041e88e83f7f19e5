"""Credentials decided by the rows alone (both databases): API keys made, looked up, revoked
and expired; refresh tokens rotated once, and a replayed one ending its whole session."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.auth import service
from modelyard.auth.passwords import PasswordHasher
from modelyard.auth.schemas import ApiKeyCreate, UserCreate
from modelyard.auth.scopes import Scope
from modelyard.auth.tokens import TokenService
from modelyard.changes.events import EventKind
from modelyard.config import Settings
from modelyard.db.tables import ApiKey, RefreshToken, User
from modelyard.db.types import utcnow
from modelyard.errors import Forbidden, NotFound, Unauthorized
from modelyard.ratelimit import RateLimiter
from tests.support.events import RecordedEvents
from tests.support.rows import add_user

PASSWORD = "a long enough password"


@pytest.fixture
def tokens(settings: Settings) -> TokenService:
    return TokenService(settings)


async def new_key(
    db: AsyncSession, user: User, events: RecordedEvents | None = None, **fields: object
) -> service.NewApiKey:
    caller = service.Caller(user, api_key_id=None)
    data = ApiKeyCreate.model_validate({"name": "ci", **fields})
    return await service.create_api_key(db, caller, data, events=events or RecordedEvents())


async def sign_in(db: AsyncSession, settings: Settings, tokens: TokenService) -> service.IssuedPair:
    """Register an account and log in: a new session."""
    passwords = PasswordHasher(settings)
    events = RecordedEvents()
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    data = UserCreate(email=email, password=PASSWORD)
    await service.register_user(db, data, passwords=passwords, events=events)
    failures = service.FailureLimit(RateLimiter(), limit=0, window_seconds=60)
    return await service.login(
        db, email, PASSWORD, passwords=passwords, tokens=tokens, failures=failures, events=events
    )


# --- API keys -----------------------------------------------------------------------------------


async def test_a_new_key_names_its_owner_and_default_scopes_and_only_its_hash_is_stored(
    db: AsyncSession,
) -> None:
    user = await add_user(db)
    events = RecordedEvents()

    made = await new_key(db, user, events)
    caller = await service.authenticate_api_key(db, made.key)

    assert (caller.user.id, caller.api_key_id) == (user.id, made.row.id)
    assert caller.scopes == frozenset({Scope.READ, Scope.PREDICT})
    assert caller.models is None
    stored = await db.scalar(select(ApiKey).where(ApiKey.id == made.row.id))
    assert stored is not None
    assert made.key.startswith(stored.prefix)
    assert made.key not in (stored.key_hash, stored.prefix)
    assert events.names() == ["api_key.created"]
    assert made.key not in str(events.actions[0])


async def test_a_key_limited_to_models_carries_its_limit(db: AsyncSession) -> None:
    user = await add_user(db)
    made = await new_key(db, user, scopes=["predict"], models=["iris", "iris", "wine"])

    caller = await service.authenticate_api_key(db, made.key)

    assert caller.scopes == frozenset({Scope.PREDICT})
    assert caller.models == frozenset({"iris", "wine"})
    assert caller.allows(Scope.PREDICT, model="iris")
    assert not caller.allows(Scope.PREDICT, model="titanic")
    assert not caller.allows(Scope.WRITE, model="iris")


@pytest.mark.parametrize(
    "credential",
    ["not-a-key", "", "myd_0000000000_" + "x" * 43],
    ids=["not a key", "empty", "unknown prefix"],
)
async def test_anything_but_a_made_key_is_refused(db: AsyncSession, credential: str) -> None:
    user = await add_user(db)
    made = await new_key(db, user)

    with pytest.raises(Unauthorized):
        await service.authenticate_api_key(db, credential)
    with pytest.raises(Unauthorized):  # the right prefix with another secret
        await service.authenticate_api_key(db, made.key[:-4] + "AAAA")


async def test_a_revoked_key_is_refused_and_its_revocation_is_announced(db: AsyncSession) -> None:
    user = await add_user(db)
    made = await new_key(db, user)
    events = RecordedEvents()

    await service.revoke_api_key(db, user, made.row.id, events=events)

    with pytest.raises(Unauthorized, match="revoked or expired"):
        await service.authenticate_api_key(db, made.key)
    [announced] = events.announced
    assert (announced.kind, announced.api_key_id) == (EventKind.CREDENTIALS, made.row.id)
    assert events.names() == ["api_key.revoked"]


async def test_revoking_twice_announces_again_but_records_once(db: AsyncSession) -> None:
    user = await add_user(db)
    made = await new_key(db, user)
    events = RecordedEvents()

    await service.revoke_api_key(db, user, made.row.id, events=events)
    await service.revoke_api_key(db, user, made.row.id, events=events)

    assert len(events.announced) == 2
    assert events.names() == ["api_key.revoked"]


async def test_another_users_key_cannot_be_revoked(db: AsyncSession) -> None:
    alice, bob = await add_user(db), await add_user(db)
    made = await new_key(db, alice)

    with pytest.raises(NotFound):
        await service.revoke_api_key(db, bob, made.row.id, events=RecordedEvents())

    assert (await service.authenticate_api_key(db, made.key)).user.id == alice.id


async def test_an_expired_key_is_refused(db: AsyncSession) -> None:
    user = await add_user(db)
    made = await new_key(db, user, expires_at=(utcnow() + timedelta(days=1)).isoformat())
    made.row.expires_at = utcnow() - timedelta(seconds=1)
    await db.commit()

    with pytest.raises(Unauthorized, match="revoked or expired"):
        await service.authenticate_api_key(db, made.key)


async def test_the_key_of_a_deactivated_user_is_refused(db: AsyncSession) -> None:
    user = await add_user(db)
    made = await new_key(db, user)
    user.is_active = False
    await db.commit()

    with pytest.raises(Unauthorized):
        await service.authenticate_api_key(db, made.key)


async def test_a_key_cannot_make_keys_and_only_an_admin_grants_admin(db: AsyncSession) -> None:
    user = await add_user(db)
    admin = await add_user(db, is_admin=True)
    made = await new_key(db, user, scopes=["read", "write"])
    with_key = service.Caller(user, api_key_id=made.row.id, scopes=frozenset({"write"}))

    with pytest.raises(Forbidden, match="signed-in session"):
        await service.create_api_key(
            db, with_key, ApiKeyCreate(name="more"), events=RecordedEvents()
        )
    with pytest.raises(Forbidden, match="only an admin"):
        await new_key(db, user, scopes=["admin"])
    assert Scope.ADMIN in (await new_key(db, admin, scopes=["admin"])).row.scopes


# --- refresh tokens -----------------------------------------------------------------------------


async def test_a_refresh_token_rotates_once_into_a_pair_of_the_same_session(
    db: AsyncSession, settings: Settings, tokens: TokenService
) -> None:
    first = await sign_in(db, settings, tokens)

    second = await service.rotate_refresh_token(
        db, first.refresh_token, tokens=tokens, events=RecordedEvents()
    )

    old = tokens.verify(first.refresh_token, "refresh")
    new = tokens.verify(second.refresh_token, "refresh")
    assert new.family_id == old.family_id
    assert new.jti != old.jti
    user, _ = await service.authenticate_access_token(db, second.access_token, tokens=tokens)
    assert user.id == old.user_id
    # The old access token holds until it expires: rotation ends nothing.
    await service.authenticate_access_token(db, first.access_token, tokens=tokens)


async def test_a_replayed_refresh_token_ends_its_whole_session(
    db: AsyncSession, settings: Settings, tokens: TokenService
) -> None:
    first = await sign_in(db, settings, tokens)
    second = await service.rotate_refresh_token(
        db, first.refresh_token, tokens=tokens, events=RecordedEvents()
    )
    events = RecordedEvents()

    with pytest.raises(Unauthorized, match="already used; the session has been revoked"):
        await service.rotate_refresh_token(db, first.refresh_token, tokens=tokens, events=events)

    # The thief's token and the rightful holder's newer one alike.
    with pytest.raises(Unauthorized):
        await service.rotate_refresh_token(
            db, second.refresh_token, tokens=tokens, events=RecordedEvents()
        )
    for access in (first.access_token, second.access_token):
        with pytest.raises(Unauthorized, match="token revoked"):
            await service.authenticate_access_token(db, access, tokens=tokens)
    assert events.names() == ["auth.refresh_token_reused"]
    assert events.actions[0].outcome == "failure"


async def test_a_replayed_token_leaves_the_users_other_sessions_alone(
    db: AsyncSession, settings: Settings, tokens: TokenService
) -> None:
    stolen = await sign_in(db, settings, tokens)
    user_id = tokens.verify(stolen.refresh_token, "refresh").user_id
    user = await db.get(User, user_id)
    assert user is not None
    other = service._issue_pair(db, user, uuid.uuid4(), tokens)  # a login on another device
    await db.commit()
    await service.rotate_refresh_token(
        db, stolen.refresh_token, tokens=tokens, events=RecordedEvents()
    )

    with pytest.raises(Unauthorized):
        await service.rotate_refresh_token(
            db, stolen.refresh_token, tokens=tokens, events=RecordedEvents()
        )

    await service.authenticate_access_token(db, other.access_token, tokens=tokens)
    rotated = await service.rotate_refresh_token(
        db, other.refresh_token, tokens=tokens, events=RecordedEvents()
    )
    assert rotated.refresh_token != other.refresh_token


async def test_a_logged_out_sessions_refresh_token_is_invalid_without_a_reuse_alarm(
    db: AsyncSession, settings: Settings, tokens: TokenService
) -> None:
    pair = await sign_in(db, settings, tokens)
    user = await db.get(User, tokens.verify(pair.refresh_token, "refresh").user_id)
    assert user is not None
    await service.logout(db, user, pair.refresh_token, tokens=tokens, events=RecordedEvents())
    events = RecordedEvents()

    with pytest.raises(Unauthorized, match="invalid token"):
        await service.rotate_refresh_token(db, pair.refresh_token, tokens=tokens, events=events)

    assert events.actions == []
    revoked = await db.scalars(
        select(RefreshToken.revoked_at).where(RefreshToken.user_id == user.id)
    )
    assert all(at is not None for at in revoked)
