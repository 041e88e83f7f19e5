"""Use cases of the files area: every path is checked, then kept under `files/<user id>/`."""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Sequence
from pathlib import PurePosixPath

from sqlalchemy import select
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
from modelyard.db.tables import User
from modelyard.errors import BadRequest, Unprocessable
from modelyard.events import Action, Events
from modelyard.files.schemas import FileRead, FileStored
from modelyard.schemas import DownloadUrl, PageParams

MAX_PATH_BYTES = 1024
FILES_PREFIX = "files"


class InvalidPath(BadRequest):
    type = "invalid-path"


class FileNotFound(ObjectNotFound):
    type = "file-not-found"

    def __init__(self, path: str) -> None:
        super().__init__(f"file {path!r} not found")


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


async def store_file(
    store: ArtifactStore,
    *,
    owner_id: uuid.UUID,
    path: str | None,
    received: ReceivedFile,
    events: Events,
) -> FileStored:
    """Put an uploaded file at `path` (default: its file name), replacing any file there."""
    path = validate_path(path if path is not None else default_path(received.filename))
    await store.put_file(file_key(owner_id, path), received.path, sha256=received.sha256)
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
    store: ArtifactStore, *, owner_id: uuid.UUID, path: str, events: Events
) -> None:
    """Delete one of the caller's files.

    Raises:
        FileNotFound: the caller has no file at `path`.
    """
    key = file_key(owner_id, path)
    if await store.stat(key) is None:
        raise FileNotFound(path)
    await store.delete(key)
    await events.record(_file_action("file.deleted", owner_id, path))
