"""The storage quota of the files area, on both storage backends and both databases: uploads
past it answer 403 and keep nothing; deletes and replacements free their bytes; files stored
before usage was counted are counted from the store; concurrent uploads never pass it together.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.artifacts.store import ArtifactStore, ObjectInfo
from modelyard.config import Settings
from modelyard.db.tables import StoredFile, User
from modelyard.db.types import utcnow
from modelyard.files import service as files_service
from modelyard.files.service import StorageQuotaExceeded
from modelyard.state import AppState
from tests.artifacts.multipart import CONTENT_TYPE, body, in_chunks, part
from tests.files.test_router import upload
from tests.support.factories import Account, make_version
from tests.support.problems import assert_problem
from tests.support.settings import make_settings

QUOTA = 1_000


@pytest.fixture
def settings(tmp_path: Path, database_url: str, storage_settings: dict[str, object]) -> Settings:
    return make_settings(tmp_path, database_url, storage_quota_bytes=QUOTA, **storage_settings)


async def counted(app: FastAPI, account: Account) -> int:
    """Return the bytes the quota counts for `account` (its rows of stored_files)."""
    state: AppState = app.state.modelyard
    async with state.sessions() as db:
        total = await db.scalar(
            select(func.coalesce(func.sum(StoredFile.size_bytes), 0)).where(
                StoredFile.owner_id == uuid.UUID(account.id)
            )
        )
    return int(total or 0)


async def paths(client: httpx.AsyncClient, account: Account) -> list[str]:
    listed = await client.get("/api/v1/files", headers=account.headers)
    return [item["path"] for item in listed.json()["items"]]


async def test_an_upload_past_the_quota_is_refused_with_403_and_nothing_is_kept(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    assert (await upload(client, user, b"a" * 600, path="a.bin")).status_code == 201

    refused = await upload(client, user, b"b" * 600, path="b.bin")

    problem = assert_problem(refused, 403)
    assert problem["type"].endswith("/storage-quota-exceeded")
    assert problem["detail"].startswith("the storage quota is exceeded: 600 of 1000 bytes are used")
    assert await paths(client, user) == ["a.bin"]
    assert await counted(app, user) == 600


async def test_an_upload_is_refused_as_soon_as_it_streams_past_what_is_left(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    state: AppState = app.state.modelyard
    await upload(client, user, b"a" * 600, path="a.bin")
    data = body(part("file", b"x" * 4_096, filename="big.bin"), part("path", b"big.bin"))

    response = await client.post(
        "/api/v1/files/upload",
        content=in_chunks(data, 500),
        headers={"Content-Type": CONTENT_TYPE, **user.headers},
    )

    problem = assert_problem(response, 403)
    assert problem["detail"] == (
        "the storage quota is exceeded: 600 of 1000 bytes are used; this upload needs more "
        "than the 400 left"
    )
    assert list((state.settings.data_dir / "tmp").iterdir()) == []
    assert await paths(client, user) == ["a.bin"]


async def test_a_full_area_refuses_any_upload(client: httpx.AsyncClient, user: Account) -> None:
    await upload(client, user, b"a" * QUOTA, path="a.bin")

    refused = await upload(client, user, b"b", path="b.bin")

    assert assert_problem(refused, 403)["detail"] == (
        "the storage quota is exceeded: 1000 of 1000 bytes are used; this upload needs more "
        "than the 0 left"
    )


async def test_deleting_a_file_frees_its_bytes(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    await upload(client, user, b"a" * 800, path="a.bin")
    deleted = await client.delete("/api/v1/files/a.bin", headers=user.headers)

    stored = await upload(client, user, b"b" * 800, path="b.bin")

    assert deleted.status_code == 204
    assert stored.status_code == 201, stored.text
    assert await counted(app, user) == 800


async def test_a_replaced_file_stops_counting_once_the_new_one_is_stored(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    await upload(client, user, b"a" * 400, path="a.bin")
    replaced = await upload(client, user, b"A" * 500, path="a.bin")  # beside it: 900

    other = await upload(client, user, b"b" * 500, path="b.bin")  # 500 + 500

    assert replaced.status_code == 201
    assert other.status_code == 201, other.text
    assert await counted(app, user) == QUOTA


async def test_files_stored_before_usage_was_counted_are_counted_from_the_store(
    app: FastAPI, client: httpx.AsyncClient, user: Account, tmp_path: Path
) -> None:
    # As if stored before the quota existed: an object of the area, no row.
    state: AppState = app.state.modelyard
    old = tmp_path / "old.bin"
    old.write_bytes(b"o" * 700)
    await state.store.put_file(f"files/{user.id}/old.bin", old)

    refused = await upload(client, user, b"b" * 400, path="b.bin")
    stored = await upload(client, user, b"b" * 300, path="b.bin")

    assert assert_problem(refused, 403)["detail"].startswith(
        "the storage quota is exceeded: 700 of 1000 bytes are used"
    )
    assert stored.status_code == 201
    assert await counted(app, user) == QUOTA


async def test_concurrent_uploads_never_pass_the_quota_together(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    responses = await asyncio.gather(
        *(upload(client, user, bytes([65 + i]) * 300, path=f"f{i}.bin") for i in range(6))
    )

    # However they interleave, three fit and the others are refused.
    assert sorted(r.status_code for r in responses) == [201] * 3 + [403] * 3
    assert await counted(app, user) == 900
    assert len(await paths(client, user)) == 3


async def test_another_accounts_files_do_not_count(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await upload(client, user, b"a" * QUOTA, path="a.bin")

    theirs = await upload(client, other_user, b"b" * QUOTA, path="a.bin")

    assert theirs.status_code == 201, theirs.text


async def test_model_artifacts_do_not_count(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    version = await make_version(client, user, iris_skops)

    stored = await upload(client, user, b"a" * QUOTA, path="a.bin")

    assert version["file_size"] > QUOTA
    assert stored.status_code == 201, stored.text


# --- the service: reservations ------------------------------------------------------------------


async def make_owner(db: AsyncSession) -> uuid.UUID:
    user = User(email=f"{uuid.uuid4().hex}@example.com", password_hash="x")
    db.add(user)
    await db.commit()
    return user.id


async def test_a_reservation_that_does_not_fit_is_refused_and_dropped(
    db: AsyncSession, store: ArtifactStore
) -> None:
    owner = await make_owner(db)
    await files_service.reserve(db, store, owner, size=700, limit=QUOTA)

    with pytest.raises(StorageQuotaExceeded) as caught:
        await files_service.reserve(db, store, owner, size=400, limit=QUOTA)

    assert caught.value.detail == (
        "the storage quota is exceeded: 700 of 1000 bytes are used; this upload needs 400 bytes"
    )
    assert await files_service.used_bytes(db, store, owner) == 700


async def test_a_reservation_left_by_an_upload_that_died_expires(
    db: AsyncSession, store: ArtifactStore
) -> None:
    owner = await make_owner(db)
    long_ago = utcnow() - files_service.RESERVATION_TTL - timedelta(seconds=1)
    db.add(StoredFile(owner_id=owner, path=None, size_bytes=QUOTA, created_at=long_ago))
    await db.commit()

    await files_service.reserve(db, store, owner, size=QUOTA, limit=QUOTA)

    assert await files_service.used_bytes(db, store, owner) == QUOTA


async def test_a_file_uploaded_while_the_area_is_first_counted_counts_once(
    db: AsyncSession, store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await make_owner(db)
    listing = store.list
    raced = False

    def list_after_an_upload(prefix: str) -> AsyncIterator[ObjectInfo]:
        """The store's listing, once an upload reserved and stored its bytes meanwhile (it saw
        the area without rows before that upload reserved)."""

        async def entries() -> AsyncIterator[ObjectInfo]:
            nonlocal raced
            if not raced:
                raced = True
                await files_service.reserve(db, store, owner, size=300, limit=QUOTA)
                written = tmp_path / "f0.bin"
                written.write_bytes(b"a" * 300)
                await store.put_file(files_service.file_key(owner, "f0.bin"), written)
            async for info in listing(prefix):
                yield info

        return entries()

    monkeypatch.setattr(store, "list", list_after_an_upload)

    used = await files_service.used_bytes(db, store, owner)

    assert raced
    assert used == 300
