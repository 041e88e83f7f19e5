"""Garbage collection of stored objects that no database row references any more."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from modelyard.artifacts.store import ArtifactStore

log = logging.getLogger(__name__)

GC_BATCH = 500


async def collect_garbage(
    store: ArtifactStore,
    *,
    prefix: str,
    referenced: Callable[[list[str]], Awaitable[set[str]]],
    older_than: timedelta,
    batch_size: int = GC_BATCH,
) -> int:
    """Delete the objects under `prefix` that `referenced` disowns; return how many went.

    Objects younger than `older_than` are kept whatever `referenced` says: an upload writes its
    object before it commits its row, so a fresh unreferenced object may be about to be claimed.
    """
    cutoff = datetime.now(UTC) - older_than
    deleted = 0
    batch: list[str] = []

    async def sweep(keys: list[str]) -> int:
        keep = await referenced(keys)
        gone = [key for key in keys if key not in keep]
        for key in gone:
            await store.delete(key)
        return len(gone)

    async for info in store.list(prefix):
        if info.modified_at > cutoff:
            continue
        batch.append(info.key)
        if len(batch) >= batch_size:
            deleted += await sweep(batch)
            batch = []
    if batch:
        deleted += await sweep(batch)
    log.info("artifacts_collected", extra={"prefix": prefix, "deleted": deleted})
    return deleted
