"""What only the local folder backend must defend: symlinks, its temp folder, the disk."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import BinaryIO

import pytest

from modelyard.artifacts import LocalStore, make_store, store
from modelyard.artifacts.local import INCOMING
from modelyard.artifacts.store import InvalidKey, StorageUnavailable
from modelyard.errors import Conflict
from tests.support.settings import make_settings


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


async def test_a_symlink_out_of_the_root_is_refused(local: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (local.root / "files").mkdir()
    (local.root / "files" / "link").symlink_to(outside)

    with pytest.raises(InvalidKey):
        await local.read_bytes("files/link/secret")
    with pytest.raises(InvalidKey):
        await local.put_file("files/link/new", local.root / "files" / "link" / "secret")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


async def test_the_temp_folder_is_not_a_key(local: LocalStore) -> None:
    with pytest.raises(InvalidKey):
        await local.stat(f"{INCOMING}/x")
    assert [info async for info in local.list("")] == []


async def test_delete_prunes_empty_folders(local: LocalStore, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    await local.put_file("files/u/deep/er/f", source)

    await local.delete("files/u/deep/er/f")

    assert sorted(p.name for p in local.root.iterdir()) == [INCOMING]


async def test_a_key_cannot_be_a_file_and_a_folder(local: LocalStore, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    await local.put_file("files/u/a", source)

    with pytest.raises(Conflict):
        await local.put_file("files/u/a/b", source)


async def test_check_fails_when_the_folder_is_gone(local: LocalStore) -> None:
    await local.check()
    (local.root / INCOMING).rmdir()

    with pytest.raises(StorageUnavailable):
        await local.check()


def test_make_store_reads_file_urls(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://", storage_url=f"file://{tmp_path}/elsewhere")

    store = make_store(settings)

    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "elsewhere").resolve()


@pytest.mark.parametrize("url", ["file://relative/path", "ftp://host/x", "s3://"])
def test_make_store_refuses_unusable_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="MODELYARD_STORAGE_URL"):
        make_store(make_settings(tmp_path, "sqlite://", storage_url=url))


async def put(local: LocalStore, key: str, tmp_path: Path) -> None:
    source = tmp_path / "source.csv"
    source.write_bytes(b"a,b\n")
    await local.put_file(key, source)


async def test_a_read_cancelled_while_the_file_opens_closes_the_file(
    local: LocalStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await put(local, "files/a.csv", tmp_path)
    # The thread that opens the file waits until the reader has been cancelled.
    cancelled, opened = threading.Event(), []
    real_open = store._open_binary

    def slow_open(path: Path, mode: str) -> BinaryIO:
        cancelled.wait(timeout=30)
        f = real_open(path, mode)
        opened.append(f)
        return f

    monkeypatch.setattr(store, "_open_binary", slow_open)
    reader = asyncio.create_task(local.open("files/a.csv"))
    await asyncio.sleep(0)  # let it start waiting on the thread
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    cancelled.set()
    for _ in range(1_000):  # bounded: the thread finishes, then the loop runs the close
        if opened and opened[0].closed:
            break
        await asyncio.sleep(0.01)

    assert len(opened) == 1
    assert opened[0].closed


async def test_a_stream_used_as_a_context_closes_its_file_unread(
    local: LocalStore, tmp_path: Path
) -> None:
    await put(local, "files/b.csv", tmp_path)
    async with await local.open("files/b.csv") as stream:
        closer = stream._close
    assert closer is not None
    assert closer.__self__.closed  # type: ignore[attr-defined]
