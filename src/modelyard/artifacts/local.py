"""LocalStore: artifacts as files in one folder, for a laptop or a single host."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from modelyard.artifacts.store import (
    HASH_CHUNK_BYTES,
    ArtifactStore,
    InvalidKey,
    ObjectChanged,
    ObjectInfo,
    ObjectNotFound,
    ObjectStream,
    StorageUnavailable,
    file_sha256,
    open_local,
    validate_key,
)
from modelyard.errors import Conflict, PayloadTooLarge

log = logging.getLogger(__name__)

# Objects are written here first, then renamed into place: same file system, so the rename is
# atomic and readers never see half a file. No key may start with this segment.
INCOMING = ".incoming"


class LocalStore(ArtifactStore):
    """Objects as files under `root`; every key is checked to resolve inside it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        try:
            (self.root / INCOMING).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # Not fatal at start: readiness reports the store down until the folder is usable.
            log.warning("artifact_folder_unusable", extra={"error": type(exc).__name__})

    def path(self, key: str) -> Path:
        """Return the file that holds `key`.

        Raises:
            InvalidKey: the key is malformed, reserved, or resolves outside the root (also
                through a symbolic link).
        """
        validate_key(key)
        if key.split("/", 1)[0] == INCOMING:
            raise InvalidKey("object key uses a reserved name")
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidKey("object key leaves the store")
        return path

    async def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        target = self.path(key)
        if sha256 is None:
            sha256 = await asyncio.to_thread(file_sha256, path)
        tmp = self._incoming_name()
        try:
            # A hard link costs nothing and leaves the caller's file alone; a copy when the
            # source lives on another file system.
            try:
                await asyncio.to_thread(os.link, path, tmp)
            except OSError:
                await asyncio.to_thread(shutil.copyfile, path, tmp)
            return await asyncio.to_thread(self._publish, tmp, target, key, sha256)
        finally:
            await asyncio.to_thread(_unlink, tmp)

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int
    ) -> ObjectInfo:
        target = self.path(key)
        tmp = self._incoming_name()
        digest = hashlib.sha256()
        size = 0
        try:
            with await asyncio.to_thread(tmp.open, "xb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"object exceeds {max_bytes} bytes")
                    digest.update(chunk)
                    await asyncio.to_thread(f.write, chunk)
            return await asyncio.to_thread(self._publish, tmp, target, key, digest.hexdigest())
        finally:
            await asyncio.to_thread(_unlink, tmp)

    async def open(
        self, key: str, *, chunk_size: int = 1 << 20, sha256: str | None = None
    ) -> ObjectStream:
        path = self.path(key)
        try:
            f = await open_local(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound from exc
        # fstat of the open file: a rename over the key from now on does not change these bytes.
        info = _info(key, os.fstat(f.fileno()), sha256)
        if sha256 is not None:
            # The folder keeps no digests: hash the opened file itself, then stream it from the
            # start, so what was checked is exactly what is sent.
            try:
                actual = await asyncio.to_thread(_rewound_sha256, f)
            except BaseException:
                f.close()
                raise
            if actual != sha256:
                f.close()
                raise ObjectChanged
        return ObjectStream(info, _read_chunks(f, chunk_size), close=f.close)

    async def read_bytes(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound from exc

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self.path(key)
        try:
            st = await asyncio.to_thread(path.stat)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        return _info(key, st)

    async def delete(self, key: str) -> None:
        path = self.path(key)
        await asyncio.to_thread(self._delete, path)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        for info in await asyncio.to_thread(self._list, prefix):
            yield info

    async def presigned_url(
        self, key: str, *, expires_in: int, filename: str | None = None
    ) -> str | None:
        self.path(key)
        return None  # a folder serves nothing itself: the app signs its own links

    async def check(self) -> None:
        incoming = self.root / INCOMING
        usable = await asyncio.to_thread(
            lambda: incoming.is_dir() and os.access(incoming, os.W_OK | os.X_OK)
        )
        if not usable:
            raise StorageUnavailable("the artifact folder is missing or not writable")

    async def aclose(self) -> None:
        pass

    def _incoming_name(self) -> Path:
        return self.root / INCOMING / f"{uuid.uuid4().hex}.part"

    def _publish(self, tmp: Path, target: Path, key: str, sha256: str) -> ObjectInfo:
        # A concurrent delete may prune the parent folder between mkdir and rename: retry.
        for attempt in range(3):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
                break
            except FileNotFoundError:
                if attempt == 2 or not tmp.exists():
                    raise
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                # A file cannot also be a folder: "a" and "a/b" cannot both exist on disk.
                raise Conflict("an object key is both a file and a folder here") from exc
        return _info(key, target.stat(), sha256)

    def _delete(self, path: Path) -> None:
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return
        # Prune folders the delete left empty, so listings and the disk stay tidy.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def _list(self, prefix: str) -> builtins.list[ObjectInfo]:
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if folder.split("/", 1)[0] == INCOMING:
            return []
        start = (self.root / folder).resolve() if folder else self.root
        if not start.is_relative_to(self.root) or not start.is_dir():
            return []
        found: builtins.list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = [d for d in dirnames if d != INCOMING]
            for name in filenames:
                file = here / name
                key = file.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    found.append(_info(key, file.stat()))
        # The order S3 lists in (UTF-8 bytes), so both backends page alike.
        found.sort(key=lambda info: info.key.encode())
        return found


def _rewound_sha256(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(HASH_CHUNK_BYTES):
        digest.update(chunk)
    f.seek(0)
    return digest.hexdigest()


async def _read_chunks(f: BinaryIO, chunk_size: int) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(f.read, chunk_size):
            yield chunk
    finally:
        f.close()


def _info(key: str, st: os.stat_result, sha256: str | None = None) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=st.st_size,
        modified_at=datetime.fromtimestamp(st.st_mtime, UTC),
        sha256=sha256,
    )


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
