"""collect_garbage: unreferenced old objects go, referenced or young ones stay."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from modelyard.artifacts import LocalStore
from modelyard.artifacts.gc import collect_garbage


async def test_unreferenced_old_objects_are_deleted_in_batches(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    keys = [f"models/m/{n:02d}" for n in range(7)]
    for n, key in enumerate([*keys, "files/u/outside-the-prefix"]):
        source = tmp_path / f"f{n}"
        source.write_bytes(b"x")
        await store.put_file(key, source)
    hour_ago = time.time() - 3600
    for key in keys[:6]:
        os.utime(store.path(key), (hour_ago, hour_ago))
    asked: list[list[str]] = []

    async def referenced(batch: list[str]) -> set[str]:
        asked.append(batch)
        return {keys[0], keys[3]}

    deleted = await collect_garbage(
        store,
        prefix="models/",
        referenced=referenced,
        older_than=timedelta(minutes=10),
        batch_size=4,
    )

    assert deleted == 4
    assert asked == [keys[:4], keys[4:6]]
    remaining = [info.key async for info in store.list("")]
    assert remaining == ["files/u/outside-the-prefix", keys[0], keys[3], keys[6]]
