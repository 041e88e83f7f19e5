"""The ArtifactStore contract, run on the local folder and on S3 (moto) alike."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from modelyard.artifacts import ArtifactStore, LocalStore, ObjectNotFound, S3Store
from modelyard.artifacts.local import INCOMING
from modelyard.artifacts.store import InvalidKey, StorageUnavailable
from modelyard.errors import PayloadTooLarge


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def local_file(tmp_path: Path, data: bytes, name: str = "upload.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def test_put_file_stores_bytes_and_reports_them(store: ArtifactStore, tmp_path: Path) -> None:
    data = b"model bytes" * 1000

    info = await store.put_file("models/m1/v1", local_file(tmp_path, data))

    assert info.key == "models/m1/v1"
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert await store.read_bytes("models/m1/v1") == data


async def test_put_file_leaves_the_source_file_in_place(
    store: ArtifactStore, tmp_path: Path
) -> None:
    source = local_file(tmp_path, b"abc")

    await store.put_file("models/m1/v1", source)

    assert source.read_bytes() == b"abc"


async def test_put_file_replaces_an_existing_object(store: ArtifactStore, tmp_path: Path) -> None:
    await store.put_file("files/u/a.txt", local_file(tmp_path, b"old", "old"))

    await store.put_file("files/u/a.txt", local_file(tmp_path, b"new!", "new"))

    assert await store.read_bytes("files/u/a.txt") == b"new!"
    info = await store.stat("files/u/a.txt")
    assert info is not None
    assert info.size == 4


async def test_put_stream_hashes_and_counts(store: ArtifactStore) -> None:
    info = await store.put_stream("k/streamed", chunks_of(b"ab", b"cd", b"e"), max_bytes=10)

    assert info.size == 5
    assert info.sha256 == hashlib.sha256(b"abcde").hexdigest()
    assert await store.read_bytes("k/streamed") == b"abcde"


async def test_put_stream_past_the_limit_leaves_nothing(store: ArtifactStore, storage: str) -> None:
    with pytest.raises(PayloadTooLarge):
        await store.put_stream("k/big", chunks_of(b"12345", b"67890", b"X"), max_bytes=10)

    assert await store.stat("k/big") is None
    assert [info async for info in store.list("k/")] == []
    if isinstance(store, LocalStore):
        assert list((store.root / INCOMING).iterdir()) == []


async def test_open_streams_the_object_in_chunks(store: ArtifactStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 100
    await store.put_file("k/obj", local_file(tmp_path, data))

    stream = await store.open("k/obj", chunk_size=1000)
    chunks = [chunk async for chunk in stream]

    assert stream.info.size == len(data)
    assert b"".join(chunks) == data
    assert len(chunks) > 1


async def test_open_of_a_missing_object_raises_before_reading(store: ArtifactStore) -> None:
    with pytest.raises(ObjectNotFound):
        await store.open("k/missing")


async def test_read_bytes_of_a_missing_object_raises(store: ArtifactStore) -> None:
    with pytest.raises(ObjectNotFound):
        await store.read_bytes("k/missing")


async def test_stat_of_a_missing_object_is_none(store: ArtifactStore) -> None:
    assert await store.stat("k/missing") is None


async def test_delete_removes_and_is_idempotent(store: ArtifactStore, tmp_path: Path) -> None:
    await store.put_file("k/gone", local_file(tmp_path, b"x"))

    await store.delete("k/gone")
    await store.delete("k/gone")

    assert await store.stat("k/gone") is None


async def test_list_yields_keys_under_a_string_prefix_in_order(
    store: ArtifactStore, tmp_path: Path
) -> None:
    source = local_file(tmp_path, b"x")
    for key in ("files/u/b.txt", "files/u/a/z.txt", "files/u/a-1.txt", "files/v/a.txt"):
        await store.put_file(key, source)

    everything = [info.key async for info in store.list("files/u/")]
    partial = [info.key async for info in store.list("files/u/a")]

    assert everything == ["files/u/a-1.txt", "files/u/a/z.txt", "files/u/b.txt"]
    assert partial == ["files/u/a-1.txt", "files/u/a/z.txt"]
    assert [info async for info in store.list("nothing/")] == []


async def test_list_reports_size_and_time(store: ArtifactStore, tmp_path: Path) -> None:
    stored = await store.put_file("files/u/x", local_file(tmp_path, b"12345"))

    [listed] = [info async for info in store.list("files/u/")]

    assert listed.size == 5
    assert abs((listed.modified_at - stored.modified_at).total_seconds()) < 2
    assert listed.modified_at.utcoffset() is not None


@pytest.mark.parametrize(
    "key",
    ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a\\b", "a\x00b", "a/", "x" * 1025],
    ids=["empty", "absolute", "dotdot", "nested-dotdot", "dot", "empty-seg", "backslash", "nul",
         "trailing-slash", "too-long"],
)  # fmt: skip
async def test_hostile_keys_are_refused(store: ArtifactStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        await store.stat(key)


async def test_s3_presigned_url_works_without_credentials(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    store = S3Store(
        s3_bucket,
        "presign-test",
        endpoint_url=s3_endpoint,
        access_key_id="testing",
        secret_access_key="testing",
    )
    await store.put_file("files/u/report.csv", local_file(tmp_path, b"a,b\n1,2\n"))

    url = await store.presigned_url("files/u/report.csv", expires_in=60, filename="report.csv")
    assert url is not None
    async with httpx.AsyncClient() as plain:
        good = await plain.get(url)
        # moto checks that a request is signed, not the SigV4 signature itself: tampering is
        # S3's to refuse, and the signing is boto3's. Here: no signature, no access.
        unsigned = await plain.get(url.split("?", 1)[0])
    await store.aclose()

    assert good.status_code == 200
    assert good.content == b"a,b\n1,2\n"
    assert good.headers["content-disposition"].startswith('attachment; filename="report.csv"')
    assert unsigned.status_code == 403


async def test_s3_store_that_cannot_be_reached_is_unavailable() -> None:
    store = S3Store(
        "modelyard-test",
        endpoint_url="http://127.0.0.1:1",
        access_key_id="testing",
        secret_access_key="testing",
        max_attempts=1,
    )

    with pytest.raises(StorageUnavailable):
        await store.check()
    with pytest.raises(StorageUnavailable):
        await store.stat("k/any")
    await store.aclose()


async def test_s3_store_without_its_bucket_is_unavailable(s3_endpoint: str) -> None:
    store = S3Store(
        "no-such-bucket",
        endpoint_url=s3_endpoint,
        access_key_id="testing",
        secret_access_key="testing",
    )

    with pytest.raises(StorageUnavailable):
        await store.check()
    await store.aclose()


async def test_ensure_bucket_creates_a_missing_bucket(s3_endpoint: str) -> None:
    store = S3Store(
        "made-by-ensure-bucket",
        endpoint_url=s3_endpoint,
        access_key_id="testing",
        secret_access_key="testing",
    )

    await store.ensure_bucket()
    await store.ensure_bucket()

    await store.check()
    await store.aclose()
