"""The per-process cache of loaded runtimes: LRU, bounded by count and bytes, single-flight loads."""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Self

from modelyard.config import Settings
from modelyard.observability import tracing
from modelyard.observability.metrics import Metrics
from modelyard.serving.runtimes import Runtime


class ModelCache:
    """Per-process LRU of loaded runtimes, bounded by count and by bytes; each version loads once.

    Bounds are checked after each insert, evicting least recently used entries first. A model
    whose `nbytes` alone exceeds `max_bytes` is still kept, as the only entry: refusing it would
    mean loading it again for every request. Evicted runtimes stay usable by requests that
    already hold them; their memory goes when the last of those finishes.
    """

    def __init__(self, *, max_models: int, max_bytes: int, metrics: Metrics) -> None:
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.metrics = metrics
        self._entries: OrderedDict[uuid.UUID, Runtime] = OrderedDict()
        self._bytes = 0
        # The load in flight per version: concurrent misses wait for it. Also the strong
        # reference to the task (the event loop holds tasks weakly) while its waiters may all
        # have been cancelled.
        self._loads: dict[uuid.UUID, asyncio.Task[Runtime]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> Self:
        """Build the cache from the model cache settings."""
        return cls(
            max_models=settings.model_cache_max_models,
            max_bytes=settings.model_cache_max_bytes,
            metrics=metrics,
        )

    async def get(self, version_id: uuid.UUID, load: Callable[[], Awaitable[Runtime]]) -> Runtime:
        """Return the cached runtime of a version, loading it with `load` on a miss.

        Concurrent misses of one version share a single `load`; if it fails, every waiter gets
        its exception and nothing is cached. A cancelled caller does not cancel the load.
        """
        # The hot path: a dict lookup, a move and a counter; no await, no lock.
        runtime = self._entries.get(version_id)
        if runtime is not None:
            self._entries.move_to_end(version_id)
            self.metrics.cache_hits.inc()
            return runtime
        task = self._loads.get(version_id)
        if task is None:
            self.metrics.cache_misses.inc()
            task = asyncio.get_running_loop().create_task(self._load(version_id, load))
            self._loads[version_id] = task
            task.add_done_callback(self._load_done)
        # shield: cancelling one waiter must not cancel the load the others are waiting for.
        return await asyncio.shield(task)

    async def _load(self, version_id: uuid.UUID, load: Callable[[], Awaitable[Runtime]]) -> Runtime:
        try:
            with tracing.span("model.load", **{"modelyard.version_id": str(version_id)}):
                runtime = await load()
        finally:
            del self._loads[version_id]
        self._insert(version_id, runtime)
        return runtime

    def _load_done(self, task: asyncio.Task[Runtime]) -> None:
        if not task.cancelled():
            # Marks the exception retrieved: waiters have it, or there are none left to tell.
            task.exception()

    def _insert(self, version_id: uuid.UUID, runtime: Runtime) -> None:
        previous = self._entries.pop(version_id, None)
        if previous is not None:
            self._bytes -= previous.nbytes
        self._entries[version_id] = runtime
        self._bytes += runtime.nbytes
        # The newest entry is last; `len > 1` keeps it even when it alone passes max_bytes.
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_models or self._bytes > self.max_bytes
        ):
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self.metrics.cache_evictions.inc()
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.cache_models.set(len(self._entries))
        self.metrics.cache_bytes.set(self._bytes)

    def peek(self, version_id: uuid.UUID) -> Runtime | None:
        """Return the cached runtime of a version, or None; never loads, counts no hit or miss.

        A found runtime counts as used for the LRU order, so a caller serving through peek()
        does not see its hottest model evicted first.
        """
        runtime = self._entries.get(version_id)
        if runtime is not None:
            self._entries.move_to_end(version_id)
        return runtime

    def __len__(self) -> int:
        """Return how many runtimes the cache holds."""
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Return the estimated bytes of the runtimes the cache holds."""
        return self._bytes
