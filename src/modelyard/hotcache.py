"""Per-process caches of the request hot path, dropped whenever their shared epoch moves."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from modelyard.epochs import Epoch, Epochs

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_ENTRIES = 10_000


class EpochCache(Generic[K, V]):
    """Remember answers until their epoch moves or their lifetime ends, whichever is first.

    Fill it with the epoch read *before* asking the database (`current()`), so that a change
    committed while the answer was being computed still invalidates it.
    """

    def __init__(
        self, epochs: Epochs, epoch: Epoch, *, ttl_seconds: float, max_entries: int = MAX_ENTRIES
    ) -> None:
        self.epochs = epochs
        self.epoch = epoch
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[V, int, float]] = OrderedDict()
        # Keys being computed by `fill`, and how many requests wait on each.
        self._fills: dict[K, asyncio.Lock] = {}
        self._waiting: Counter[K] = Counter()

    def current(self) -> int:
        """Return the epoch to fill the cache with after the next lookup."""
        return self.epochs.read(self.epoch)

    def get(self, key: K) -> V | None:
        """Return the remembered answer for `key` if its epoch and lifetime still hold."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, epoch, deadline = entry
        if epoch != self.epochs.read(self.epoch) or time.monotonic() > deadline:
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V, *, epoch: int, ttl_seconds: float | None = None) -> None:
        """Remember `value`, computed under `epoch`, for at most `ttl_seconds`."""
        ttl = self.ttl_seconds if ttl_seconds is None else min(ttl_seconds, self.ttl_seconds)
        if ttl <= 0:
            return
        self._entries[key] = (value, epoch, time.monotonic() + ttl)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def fill(self, key: K, compute: Callable[[], Awaitable[tuple[V, float | None]]]) -> V:
        """Return the remembered answer for `key`, else compute and remember it.

        One computation per key at a time: when an answer expires under load, the requests
        that miss it together wait for the first one's database round trip instead of each
        making their own; if it fails, the next computes in turn. `compute` returns the value
        and a lifetime of its own (None: the cache's).
        """
        value = self.get(key)
        if value is not None:
            return value
        lock = self._fills.get(key)
        if lock is None:
            lock = self._fills[key] = asyncio.Lock()
        self._waiting[key] += 1
        try:
            async with lock:
                value = self.get(key)
                if value is not None:
                    return value
                epoch = self.current()
                value, ttl_seconds = await compute()
                self.put(key, value, epoch=epoch, ttl_seconds=ttl_seconds)
                return value
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
                del self._fills[key]

    def clear(self) -> None:
        self._entries.clear()
