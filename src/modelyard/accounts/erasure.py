"""Erasing an account: everything it owns goes; the prediction log keeps its numbers without it.

What goes, in one transaction: the user row and every row that belongs to it — models with
their versions and aliases, experiments with their metric history, API keys, refresh tokens,
dashboard sessions and, through `ON DELETE CASCADE` on `users.id`, whatever else names the user
(webhooks). Then, after the commit, the stored objects: the versions' artifacts (each under a key
of its own: uploads never share an object) and the user's files area.

What stays: the prediction log and its rollups, so that the counts of everyone else's analytics
stay right. A logged prediction loses every link to the person: the caller (`user_id`,
`api_key_id`), the payloads it sent (`inputs`, `outputs`) and the `error` of a failed call (which
quotes what was sent: a record key, a cell) on the calls it made, the owner (`owner_id`) on the
calls made on its models; rollups of its models lose their `owner_id`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.accounts.service import count_owned
from modelyard.artifacts.store import ArtifactStore
from modelyard.auth import service as auth_service
from modelyard.auth.service import Caller
from modelyard.changes.events import Action, Events
from modelyard.db.tables import User
from modelyard.errors import Conflict, Forbidden, ModelyardError
from modelyard.files.service import area
from modelyard.predictions.log.erasure import unlink_person
from modelyard.predictions.log.writer import PredictionLog
from modelyard.registry import queries as registry_queries
from modelyard.teams import service as teams_service

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Erasure:
    """What an erasure removed, and what it left (counts only: nothing about the person)."""

    models: int
    versions: int
    experiments: int
    active_api_keys: int
    files: int
    # Logged predictions and rollup rows that lost their link to the person.
    predictions_unlinked: int
    rollups_unlinked: int
    # Stored objects that could not be deleted (the store was down), plus one if the files area
    # could not even be listed; see `erase_user`.
    objects_left: int


async def erase_user(
    db: AsyncSession,
    user_id: uuid.UUID,
    *,
    store: ArtifactStore,
    events: Events,
    prediction_log: PredictionLog | None = None,
) -> Erasure:
    """Erase an account and everything it owns, irreversibly (see the module).

    The database work is one transaction. Once it is committed the account is gone whatever
    follows: every worker and replica is told to forget the user's credentials and models, the
    stored objects are deleted (an object the store refuses now is logged and counted in
    `objects_left`; `modelyard gc` collects it later), this process's prediction log is flushed
    and what it wrote meanwhile about the person is unlinked too, and the action is recorded
    (`user.deleted`, with counts only).

    Raises:
        NotFound: no such user.
        Conflict: the user is the last active admin (nobody could administer the platform), or
            the last owner of a team with other members.
    """
    await auth_service.lock_for_erasure(db, user_id)
    await teams_service.before_user_erased(db, user_id)
    counts = await count_owned(db, user_id)
    model_ids = await registry_queries.owned_model_ids(db, user_id)
    # Each version's artifact is under a key of its own (`registry.service.register_version`:
    # a fresh uuid per upload, unique in `model_versions`): no remaining row can share one.
    artifact_keys = await registry_queries.owned_artifact_keys(db, user_id)
    unlinked, rollups_unlinked = await unlink_person(db, user_id)
    # Everything else goes with the user row, by the schema's ON DELETE CASCADE: models, then
    # their versions and aliases; experiments, then their metric history; API keys, refresh
    # tokens, dashboard sessions, webhooks.
    await auth_service.delete_user(db, user_id)
    await db.commit()
    log.info("user_erased", extra={"user_id": str(user_id), "models": len(model_ids)})

    # The account is gone: first, nobody may go on using its credentials or cached models.
    await events.credentials_changed(user_id=user_id)
    for model_id in model_ids:
        await events.registry_changed(model_id=model_id)

    left = 0
    for key in artifact_keys:
        if not await _delete_object(store, key):
            left += 1
    files = 0
    try:
        file_keys = [info.key async for info in store.list(area(user_id))]
    except (ModelyardError, OSError) as exc:
        log.warning("erasure_files_not_listed", extra={"error": type(exc).__name__})
        file_keys = []
        left += 1
    for key in file_keys:
        files += 1
        if not await _delete_object(store, key):
            left += 1

    if prediction_log is not None:
        # Requests of the user that were in flight at the commit logged after the first pass.
        try:
            await prediction_log.flush()
            more, more_rollups = await unlink_person(db, user_id)
            await db.commit()
            unlinked += more
            rollups_unlinked += more_rollups
        except (SQLAlchemyError, OSError) as exc:
            await db.rollback()
            log.warning("erasure_late_predictions_kept", extra={"error": type(exc).__name__})

    erasure = Erasure(
        models=counts.models,
        versions=counts.versions,
        experiments=counts.experiments,
        active_api_keys=counts.active_api_keys,
        files=files,
        predictions_unlinked=unlinked,
        rollups_unlinked=rollups_unlinked,
        objects_left=left,
    )
    await events.record(
        Action(
            name="user.deleted",
            target_type="user",
            target_id=str(user_id),
            owner_id=None,  # the account is gone: the action concerns no remaining account
            details=asdict(erasure),
        )
    )
    return erasure


async def erase_user_as_admin(
    db: AsyncSession,
    admin: User,
    user_id: uuid.UUID,
    *,
    store: ArtifactStore,
    events: Events,
    prediction_log: PredictionLog | None = None,
) -> Erasure:
    """Erase another user's account (see `erase_user`).

    Raises:
        Conflict: the admin named their own account (they erase it through `erase_own_account`,
            as they would lock themselves out here), or the last active admin.
        NotFound: no such user.
    """
    if admin.id == user_id:
        raise Conflict("admins cannot erase their own account here; use DELETE /api/v1/auth/me")
    return await erase_user(db, user_id, store=store, events=events, prediction_log=prediction_log)


async def erase_own_account(
    db: AsyncSession,
    caller: Caller,
    *,
    store: ArtifactStore,
    events: Events,
    prediction_log: PredictionLog | None = None,
) -> Erasure:
    """Erase the caller's own account (see `erase_user`).

    Raises:
        Forbidden: the caller used an API key: erasure needs a signed-in session, so that a
            leaked key cannot destroy the account.
        Conflict: the caller is the last active admin.
    """
    if caller.api_key_id is not None:
        raise Forbidden("an account can only be erased from a signed-in session, not with a key")
    return await erase_user(
        db, caller.user.id, store=store, events=events, prediction_log=prediction_log
    )


async def _delete_object(store: ArtifactStore, key: str) -> bool:
    """Delete one stored object; False (logged) when the store refused."""
    try:
        await store.delete(key)
    except (ModelyardError, OSError) as exc:
        log.warning("erasure_object_left", extra={"error": type(exc).__name__})
        return False
    return True
