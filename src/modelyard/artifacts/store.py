"""The ArtifactStore interface every backend implements, its errors and the key rules."""

from __future__ import annotations

import asyncio
import hashlib
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Self

from modelyard.artifacts.signing import LinkTarget, UrlSigner
from modelyard.errors import BadRequest, NotFound, ServiceUnavailable, Unprocessable
from modelyard.schemas import DownloadUrl

# S3's own limit on key length, applied to every backend so that keys stay portable.
MAX_KEY_BYTES = 1024
HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object; `sha256` only where the backend recorded it."""

    key: str
    size: int
    modified_at: datetime
    sha256: str | None = None


class ObjectNotFound(NotFound):
    type = "object-not-found"

    def __init__(self, detail: str = "object not found") -> None:
        # Never the key: it names the store's internal layout (user ids, version uuids).
        super().__init__(detail)


class ObjectChanged(ObjectNotFound):
    type = "object-changed"

    def __init__(self) -> None:
        super().__init__("the object is no longer the one asked for")


class StorageUnavailable(ServiceUnavailable):
    type = "storage-unavailable"

    def __init__(self, detail: str = "the artifact store is unavailable; try again shortly"):
        super().__init__(detail)


class InvalidKey(BadRequest):
    type = "invalid-key"


class ObjectStream(AsyncIterator[bytes]):
    """The chunks of one object being read, with what the store knew when it opened it.

    `info` describes exactly the bytes that will be yielded (an overwrite that lands while they
    stream does not change them), so it can fill `Content-Length` safely.
    """

    def __init__(
        self,
        info: ObjectInfo,
        chunks: AsyncIterator[bytes],
        close: Callable[[], object] | None = None,
    ) -> None:
        self.info = info
        self._chunks = chunks
        # What releases the resource even if no chunk was ever read (closing an async generator
        # that never started does not run its `finally`).
        self._close = close

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._chunks)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the file or connection behind the stream; idempotent."""
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            # Also when the generator is mid-read elsewhere (a reading thread being stopped).
            if self._close is not None:
                self._close()


async def open_local(path: Path, mode: str) -> BinaryIO:
    """Open a local file in a worker thread (a slow disk must not stall the loop).

    A caller cancelled while the thread opens it does not leak the file: it is closed as soon as
    the thread is done, not left to the garbage collector.
    """
    opening = asyncio.ensure_future(asyncio.to_thread(_open_binary, path, mode))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _open_binary(path: Path, mode: str) -> BinaryIO:
    f: BinaryIO = path.open(mode)  # type: ignore[assignment]  # a binary mode, always
    return f


def _close_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


class ArtifactStore(ABC):
    """Objects (model artifacts, user files) under string keys such as `models/<id>/<uuid>`.

    Keys are built by the server, and every backend still refuses hostile ones (`InvalidKey`):
    a bug upstream must not turn into a path traversal.
    """

    @abstractmethod
    async def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        """Store a finished local file under `key`, replacing any object there; atomic for readers.

        `sha256` is the file's digest when the caller already knows it (computed otherwise).
        The local store may hard-link `path` into place: never modify the file afterwards
        (deleting it is fine).
        """

    @abstractmethod
    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int
    ) -> ObjectInfo:
        """Store the bytes of `chunks` under `key`, hashing them on the way.

        Raises:
            PayloadTooLarge: past `max_bytes`; nothing is left behind.
        """

    @abstractmethod
    async def open(
        self, key: str, *, chunk_size: int = 1 << 20, sha256: str | None = None
    ) -> ObjectStream:
        """Start reading an object; close the stream (`aclose`) if not read to its end.

        With `sha256`, the stream yields the object only if these are its bytes (checked on the
        opened object itself, so a replacement landing meanwhile changes nothing).

        Raises:
            ObjectNotFound: before anything is read.
            ObjectChanged: the object's digest is not `sha256` (or cannot be known).
        """

    @abstractmethod
    async def read_bytes(self, key: str) -> bytes:
        """Return a whole (small) object.

        Raises:
            ObjectNotFound: no object has this key.
        """

    @abstractmethod
    async def stat(self, key: str) -> ObjectInfo | None:
        """Describe an object, or return None when there is none."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove an object; a missing one is not an error."""

    @abstractmethod
    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Yield the objects whose key starts with `prefix` (a plain string prefix), by key."""

    @abstractmethod
    async def presigned_url(
        self, key: str, *, expires_in: int, filename: str | None = None
    ) -> str | None:
        """Return a URL of the store that downloads the object without credentials for
        `expires_in` seconds, or None when the store cannot serve one (the app signs its own).

        `filename` becomes the download's `Content-Disposition`.
        """

    @abstractmethod
    async def check(self) -> None:
        """Make a cheap round trip to the store.

        Raises:
            StorageUnavailable: the store cannot be reached or used.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections and threads; the store is not used afterwards."""


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise `InvalidKey`.

    Refused: empty, absolute, backslashes, NUL or other control characters, empty, `.` or `..`
    segments, and more than 1024 UTF-8 bytes. Nothing is normalised: a key is stored as given.
    """
    if not key:
        raise InvalidKey("object key is empty")
    if key.startswith("/"):
        raise InvalidKey("object key must be relative")
    if "\\" in key:
        raise InvalidKey("object key must not contain backslashes")
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        raise InvalidKey("object key must not contain control characters")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates from a mis-decoded request
        raise InvalidKey("object key is not valid UTF-8") from exc
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidKey(f"object key is longer than {MAX_KEY_BYTES} bytes")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey("object key must not contain empty, '.' or '..' segments")
    return key


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a local file (blocking: run it in a thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


async def object_sha256(store: ArtifactStore, key: str) -> str:
    """Return the sha256 of an object: as recorded by the store, else by reading it.

    Raises:
        ObjectNotFound: no object has this key.
    """
    # A stat first: stores that record the digest (S3's metadata) answer without a download.
    info = await store.stat(key)
    if info is None:
        raise ObjectNotFound()
    if info.sha256 is not None:
        return info.sha256
    stream = await store.open(key)
    try:
        digest = hashlib.sha256()
        async for chunk in stream:
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        await stream.aclose()


async def download_link(
    store: ArtifactStore,
    signer: UrlSigner,
    target: LinkTarget,
    *,
    filename: str,
    expires_in: int,
    max_expires_in: int,
    via_app: bool,
) -> DownloadUrl:
    """Return a URL that downloads `target` without credentials for `expires_in` seconds.

    A link of the app (always on local storage, and with `via_app`) is checked at every
    download against the object's sha256, the version and the owner (see `links`); a store's
    presigned URL (S3) is checked by the store alone: key and expiry.

    Raises:
        Unprocessable: `expires_in` is not within 1..`max_expires_in` seconds.
    """
    if not 1 <= expires_in <= max_expires_in:
        raise Unprocessable(f"expires_in must be between 1 and {max_expires_in} seconds")
    now = int(time.time())
    url = None
    if not via_app:
        url = await store.presigned_url(target.key, expires_in=expires_in, filename=filename)
    if url is None:
        url = signer.url(target, now + expires_in, filename)
    return DownloadUrl(url=url, expires_at=datetime.fromtimestamp(now + expires_in, UTC))
