"""Per-process caches of the request hot path, dropped whenever their shared epoch moves."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
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

    def clear(self) -> None:
        self._entries.clear()
