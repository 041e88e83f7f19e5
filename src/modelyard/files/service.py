"""Use cases of the files area: every path is checked, then kept under `files/<user id>/`; and
the area's storage quota.

What an area holds is summed from rows of `stored_files`, never by listing the store. Every way
a file enters an area keeps its row: an upload or a batch job's output *reserves* its size first
(a row without a path, committed before its bytes reach the store), then *settles* (the row
takes the path, and the row of any file it replaced goes); a deleted file's row goes with it;
an erased account's rows go with the account (ON DELETE CASCADE). An owner's reservations are
taken one at a time, each against every row of the owner (other uploads' reservations
included), so concurrent uploads never pass the quota together. A file that replaces another is
counted beside it until it is stored. Files stored before rows were kept are counted from a
listing of the store once, the first time an area without any row is needed. Model artifacts
are not counted (uploads of models have their own size limit).
"""

from __future__ import annotations

import contextlib
import logging
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import PurePosixPath

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.artifacts.signing import LinkTarget, UrlSigner
from modelyard.artifacts.store import (
    ArtifactStore,
    ObjectNotFound,
    ObjectStream,
    download_link,
    object_sha256,
)
from modelyard.artifacts.uploads import ReceivedFile
from modelyard.changes.events import Action, Events
from modelyard.db.sql import rowcount
from modelyard.db.tables import StoredFile, User
from modelyard.db.types import utcnow
from modelyard.errors import BadRequest, Forbidden, ModelyardError, PayloadTooLarge, Unprocessable
from modelyard.files.schemas import FileRead, FileStored
from modelyard.schemas import DownloadUrl, PageParams

log = logging.getLogger(__name__)

MAX_PATH_BYTES = 1024
FILES_PREFIX = "files"


class InvalidPath(BadRequest):
    type = "invalid-path"


class FileNotFound(ObjectNotFound):
    type = "file-not-found"

    def __init__(self, path: str) -> None:
        super().__init__(f"file {path!r} not found")


class StorageQuotaExceeded(Forbidden):
    """A file that does not fit in its owner's storage quota; the message says how full it is."""

    type = "storage-quota-exceeded"

    def __init__(
        self, *, used: int, limit: int, needed: int | None = None, what: str = "this upload"
    ) -> None:
        left = max(0, limit - used)
        needs = f"{needed} bytes" if needed is not None else f"more than the {left} left"
        super().__init__(
            f"the storage quota is exceeded: {used} of {limit} bytes are used; {what} needs {needs}"
        )


def validate_path(raw: str) -> str:
    """Return `raw` if it is a safe path inside a user's area, else raise `InvalidPath` (400).

    Applied to paths as the app sees them, after percent-decoding. Refused: empty, absolute
    (`/x`, `C:\\x`), backslashes, NUL and other control characters, empty, `.` or `..` segments,
    more than 1024 UTF-8 bytes. Nothing is normalised: what is refused is never "fixed".
    """
    if not raw:
        raise InvalidPath("the path is empty")
    if raw.startswith("/") or (raw[1:2] == ":" and raw[0].isascii() and raw[0].isalpha()):
        raise InvalidPath("the path must be relative")
    if "\\" in raw:
        raise InvalidPath("the path must not contain backslashes")
    if any(unicodedata.category(ch) == "Cc" for ch in raw):
        raise InvalidPath("the path must not contain control characters")
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidPath("the path is not valid UTF-8") from exc
    if size > MAX_PATH_BYTES:
        raise InvalidPath(f"the path is longer than {MAX_PATH_BYTES} bytes")
    for segment in raw.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidPath("the path must not contain empty, '.' or '..' segments")
    return raw


def validate_prefix(raw: str) -> str:
    """Return a listing prefix: a path, possibly cut anywhere (`reports/2026-` or `reports/`)."""
    if not raw:
        return raw
    head, slash, last = raw.rpartition("/")
    # The last segment may be partial or empty; everything before it must be a valid path.
    validate_path(f"{head}{slash}{last or 'x'}")
    if last in (".", ".."):
        raise InvalidPath("the path must not contain empty, '.' or '..' segments")
    return raw


def area(owner_id: uuid.UUID) -> str:
    """Return the key prefix of a user's area (with its trailing slash)."""
    return f"{FILES_PREFIX}/{owner_id}/"


def area_owner(key: str) -> uuid.UUID | None:
    """Return the user whose area holds the object `key`, None for a key outside any area."""
    root, _, rest = key.partition("/")
    owner, slash, _ = rest.partition("/")
    if root != FILES_PREFIX or not slash:
        return None
    try:
        return uuid.UUID(owner)
    except ValueError:
        return None


async def referenced_keys(db: AsyncSession, keys: Sequence[str]) -> set[str]:
    """Return which of the `files/` keys `keys` still belong to someone: those in the area of an
    existing user (an erased account's area is left to garbage collection if the store failed
    during the erasure), and any key outside an area, which is never ours to judge."""
    owners = {key: area_owner(key) for key in keys}
    existing = set(
        await db.scalars(select(User.id).where(User.id.in_({o for o in owners.values() if o})))
    )
    return {key for key, owner in owners.items() if owner is None or owner in existing}


def file_key(owner_id: uuid.UUID, path: str) -> str:
    """Return the store key of a (validated) path in a user's area."""
    return area(owner_id) + validate_path(path)


def default_path(filename: str | None) -> str:
    """Return the path an upload gets without one: the client's file name, without folders."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    if not name or name in (".", ".."):
        raise Unprocessable("the upload has no usable file name; send a 'path' field")
    return name


async def upload_room(
    db: AsyncSession,
    store: ArtifactStore,
    *,
    owner_id: uuid.UUID,
    max_upload_bytes: int,
    quota_bytes: int,
) -> tuple[int, Callable[[], ModelyardError]]:
    """Return how many bytes an upload of `owner_id`'s may stream before it is refused, and the
    error that refuses it: the upload limit (413), or what is left of the quota (403).

    Raises:
        StorageQuotaExceeded: the area is full already (no byte of the body is read).
    """
    left = await room(db, store, owner_id, limit=quota_bytes)
    if left is None or left >= max_upload_bytes:
        return max_upload_bytes, lambda: PayloadTooLarge(
            f"the uploaded file exceeds {max_upload_bytes} bytes"
        )
    used = quota_bytes - left
    return left, lambda: StorageQuotaExceeded(used=used, limit=quota_bytes)


async def store_file(
    db: AsyncSession,
    store: ArtifactStore,
    *,
    owner_id: uuid.UUID,
    path: str | None,
    received: ReceivedFile,
    quota_bytes: int,
    events: Events,
) -> FileStored:
    """Put an uploaded file at `path` (default: its file name), replacing any file there.

    Raises:
        StorageQuotaExceeded: it does not fit in the owner's quota; nothing is stored.
    """
    path = validate_path(path if path is not None else default_path(received.filename))
    reservation = await reserve(db, store, owner_id, size=received.size, limit=quota_bytes)
    try:
        await store.put_file(file_key(owner_id, path), received.path, sha256=received.sha256)
    except BaseException:
        await release_quietly(db, reservation)
        raise
    await settle(db, reservation, owner_id=owner_id, path=path, size=received.size)
    await events.record(
        _file_action("file.uploaded", owner_id, path, size=received.size, sha256=received.sha256)
    )
    return FileStored(path=path, size=received.size, sha256=received.sha256)


def _file_action(name: str, owner_id: uuid.UUID, path: str, **details: object) -> Action:
    return Action(name=name, target_type="file", target_id=path, owner_id=owner_id, details=details)


async def list_files(
    store: ArtifactStore, *, owner_id: uuid.UUID, prefix: str | None, page: PageParams
) -> tuple[list[FileRead], int]:
    """Return one page of the caller's files, by path, and how many there are in all."""
    root = area(owner_id)
    # The store lists by key; a page is cut from the listing (cheap for a person's files).
    items: list[FileRead] = []
    total = 0
    async for info in store.list(root + validate_prefix(prefix or "")):
        if page.offset <= total < page.offset + page.limit:
            items.append(
                FileRead(path=info.key[len(root) :], size=info.size, modified_at=info.modified_at)
            )
        total += 1
    return items, total


async def open_file(store: ArtifactStore, *, owner_id: uuid.UUID, path: str) -> ObjectStream:
    """Start reading one of the caller's files.

    Raises:
        FileNotFound: the caller has no file at `path` (whoever else may have one).
    """
    try:
        return await store.open(file_key(owner_id, path))
    except ObjectNotFound as exc:
        raise FileNotFound(path) from exc


async def presign_file(
    store: ArtifactStore,
    signer: UrlSigner,
    *,
    owner_id: uuid.UUID,
    path: str,
    expires_in: int,
    max_expires_in: int,
    via_app: bool,
    events: Events,
) -> DownloadUrl:
    """Return a URL that downloads one of the caller's files without credentials for a while.

    A link of the app is bound to the file's current content and to its owner: it stops
    working once the file is deleted or replaced, or the owner deactivated.

    Raises:
        Unprocessable: `expires_in` is not within 1..`max_expires_in` seconds.
        FileNotFound: the caller has no file at `path`.
    """
    key = file_key(owner_id, path)
    if not 1 <= expires_in <= max_expires_in:
        raise Unprocessable(f"expires_in must be between 1 and {max_expires_in} seconds")
    try:
        sha256 = await object_sha256(store, key)
    except ObjectNotFound as exc:
        raise FileNotFound(path) from exc
    link = await download_link(
        store,
        signer,
        LinkTarget(key=key, owner_id=owner_id, sha256=sha256),
        filename=PurePosixPath(path).name,
        expires_in=expires_in,
        max_expires_in=max_expires_in,
        via_app=via_app,
    )
    await events.record(
        _file_action("download_link.issued", owner_id, path, expires_at=link.expires_at.isoformat())
    )
    return link


async def delete_file(
    db: AsyncSession, store: ArtifactStore, *, owner_id: uuid.UUID, path: str, events: Events
) -> None:
    """Delete one of the caller's files (it stops counting against the quota).

    Raises:
        FileNotFound: the caller has no file at `path`.
    """
    key = file_key(owner_id, path)
    if await store.stat(key) is None:
        raise FileNotFound(path)
    await store.delete(key)
    await forget(db, owner_id, path)
    await events.record(_file_action("file.deleted", owner_id, path))


# --- the storage quota ----------------------------------------------------------------------

# A reservation whose upload never settled (its process died) stops counting after this long:
# longer than any upload's move into the store takes.
RESERVATION_TTL = timedelta(hours=6)
# Settling retries when a concurrent upload to the same path settled first.
SETTLE_ATTEMPTS = 3
# Rows written at a time when an area is first counted.
COUNT_BATCH = 1_000
# The first key of the advisory locks that take one owner's reservations one at a time (the
# second is the owner's): "quota" on a phone keypad. Two-key locks never collide with one-key
# ones (audit's chain lock).
QUOTA_LOCK = 78_682


async def used_bytes(db: AsyncSession, store: ArtifactStore, owner_id: uuid.UUID) -> int:
    """Return the bytes `owner_id`'s area holds, reservations of uploads under way included."""
    await _count_area_once(db, store, owner_id)
    return await _sum(db, owner_id)


async def room(
    db: AsyncSession,
    store: ArtifactStore,
    owner_id: uuid.UUID,
    *,
    limit: int,
    what: str = "this upload",
) -> int | None:
    """Return how many more bytes `owner_id` may store (None: no quota, `limit` 0).

    Raises:
        StorageQuotaExceeded: nothing more fits.
    """
    if not limit:
        return None
    used = await used_bytes(db, store, owner_id)
    if used >= limit:
        raise StorageQuotaExceeded(used=used, limit=limit, what=what)
    return limit - used


async def reserve(
    db: AsyncSession,
    store: ArtifactStore,
    owner_id: uuid.UUID,
    *,
    size: int,
    limit: int,
    what: str = "this upload",
) -> uuid.UUID:
    """Count `size` bytes against `owner_id`'s quota (`limit`, 0: none) before they are stored;
    return the reservation, to `settle` once they are or `release` if they are not. Commits.

    Reservations of one owner are taken one at a time (PostgreSQL: an advisory lock of the
    owner; SQLite: the write lock its first statement takes), each counting every one before it.

    Raises:
        StorageQuotaExceeded: they do not fit beside what the area holds (nothing is kept).
    """
    await _count_area_once(db, store, owner_id)
    now = utcnow()
    await _lock_owner(db, owner_id)
    # A reservation left by an upload that died is nobody's any more.
    await db.execute(
        delete(StoredFile).where(
            StoredFile.owner_id == owner_id,
            StoredFile.path.is_(None),
            StoredFile.created_at < now - RESERVATION_TTL,
        )
    )
    reservation = uuid.uuid4()
    db.add(
        StoredFile(id=reservation, owner_id=owner_id, path=None, size_bytes=size, created_at=now)
    )
    await db.flush()
    total = await _sum(db, owner_id)
    if limit and total > limit:
        await db.rollback()
        raise StorageQuotaExceeded(used=total - size, limit=limit, needed=size, what=what)
    await db.commit()
    return reservation


async def settle(
    db: AsyncSession, reservation: uuid.UUID, *, owner_id: uuid.UUID, path: str, size: int
) -> None:
    """Record that the reserved bytes are now the file at `path`, replacing the row of any file
    that was there. Commits.

    Raises:
        IntegrityError: concurrent uploads to the same path kept settling first.
    """
    for attempt in range(1, SETTLE_ATTEMPTS + 1):
        await db.execute(
            delete(StoredFile).where(StoredFile.owner_id == owner_id, StoredFile.path == path)
        )
        taken = await db.execute(
            update(StoredFile).where(StoredFile.id == reservation).values(path=path)
        )
        if not rowcount(taken):
            # Past its time to live (a very slow store): the file is counted all the same.
            db.add(StoredFile(id=reservation, owner_id=owner_id, path=path, size_bytes=size))
        try:
            await db.commit()
            return
        except IntegrityError:
            # Another upload to `path` settled meanwhile: its row goes, as the file it wrote did.
            await db.rollback()
            if attempt == SETTLE_ATTEMPTS:
                raise


async def release(db: AsyncSession, reservation: uuid.UUID) -> None:
    """Drop a reservation whose bytes were not stored. Commits."""
    await db.execute(delete(StoredFile).where(StoredFile.id == reservation))
    await db.commit()


async def forget(db: AsyncSession, owner_id: uuid.UUID, path: str) -> None:
    """Stop counting the file at `path`, which was deleted. Commits."""
    await db.execute(
        delete(StoredFile).where(StoredFile.owner_id == owner_id, StoredFile.path == path)
    )
    await db.commit()


async def release_quietly(db: AsyncSession, reservation: uuid.UUID) -> None:
    """Release a reservation while another error is on its way out (that one is reported, and
    a reservation this fails to drop expires by itself)."""
    try:
        await release(db, reservation)
    except Exception:
        # Left to expire (RESERVATION_TTL); the caller's own error is what the client sees.
        with contextlib.suppress(Exception):
            await db.rollback()
        log.warning("storage_reservation_not_released", extra={"reservation": str(reservation)})


async def _sum(db: AsyncSession, owner_id: uuid.UUID) -> int:
    total = await db.scalar(
        select(func.coalesce(func.sum(StoredFile.size_bytes), 0)).where(
            StoredFile.owner_id == owner_id
        )
    )
    return int(total or 0)


async def _lock_owner(db: AsyncSession, owner_id: uuid.UUID) -> None:
    """Start a transaction that holds `owner_id`'s quota lock until it ends (PostgreSQL: an
    advisory lock of the owner; SQLite: the database's write lock, which a first statement that
    writes takes)."""
    if db.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(owner_id.bytes[:4], "big", signed=True)
        await db.execute(
            text("SELECT pg_advisory_xact_lock(:space, :key)"), {"space": QUOTA_LOCK, "key": key}
        )
    else:
        await db.execute(delete(StoredFile).where(StoredFile.id == uuid.UUID(int=0)))


async def _count_area_once(db: AsyncSession, store: ArtifactStore, owner_id: uuid.UUID) -> None:
    """Give every file of an area without any row one, from a listing of the store (files
    stored before usage was counted).

    The rows go in under the owner's quota lock and only while the area still has none: an
    upload reserves (a row, committed) before its bytes reach the store, so a file that the
    listing saw because an upload wrote it meanwhile is already counted, never twice.
    """
    if await db.scalar(select(StoredFile.id).where(StoredFile.owner_id == owner_id).limit(1)):
        await db.commit()  # end the read: the caller's next statement starts afresh
        return
    await db.commit()
    root = area(owner_id)
    rows = [
        {
            "id": uuid.uuid4(),
            "owner_id": owner_id,
            "path": info.key[len(root) :],
            "size_bytes": info.size,
            "created_at": utcnow(),
        }
        async for info in store.list(root)
    ]
    await _lock_owner(db, owner_id)
    if await db.scalar(select(StoredFile.id).where(StoredFile.owner_id == owner_id).limit(1)):
        await db.rollback()  # counted meanwhile, by another request or an upload's reservation
        return
    for first in range(0, len(rows), COUNT_BATCH):
        await _insert_new(db, rows[first : first + COUNT_BATCH])
    await db.commit()


async def _insert_new(db: AsyncSession, rows: list[dict[str, object]]) -> None:
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    await db.execute(
        insert(StoredFile).values(rows).on_conflict_do_nothing(index_elements=["owner_id", "path"])
    )
