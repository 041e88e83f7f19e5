"""Per-process caches of the request hot path, dropped whenever their shared epoch moves."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from modelyard.changes.epochs import Epoch, Epochs
from modelyard.errors import is_dependency_down

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_ENTRIES = 10_000
# How long past its lifetime the fast path may still use an answer while a refresh of it runs.
REFRESH_GRACE_SECONDS = 5.0


class EpochCache(Generic[K, V]):
    """Remember answers until their epoch moves or their lifetime ends, whichever is first.

    Fill it with the epoch read *before* asking the database (`current()`), so that a change
    committed while the answer was being computed still invalidates it.
    """

    def __init__(
        self,
        epochs: Epochs,
        epoch: Epoch,
        *,
        ttl_seconds: float,
        grace_seconds: float = REFRESH_GRACE_SECONDS,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.epochs = epochs
        self.epoch = epoch
        self.ttl_seconds = ttl_seconds
        self.grace_seconds = grace_seconds
        self.max_entries = max_entries
        self.clock = clock
        # key -> (value, epoch, end of lifetime, end of grace)
        self._entries: OrderedDict[K, tuple[V, int, float, float]] = OrderedDict()
        self._refreshing: dict[K, asyncio.Task[None]] = {}
        # Keys being computed by `fill`, and how many requests wait on each.
        self._fills: dict[K, asyncio.Lock] = {}
        self._waiting: Counter[K] = Counter()

    def current(self) -> int:
        """Return the epoch to fill the cache with after the next lookup."""
        return self.epochs.read(self.epoch)

    def get(self, key: K) -> V | None:
        """Return the remembered answer for `key` if its epoch and lifetime still hold."""
        found = self.lookup(key)
        if found is None or found[1]:
            return None
        return found[0]

    def lookup(self, key: K) -> tuple[V, bool] | None:
        """Return the remembered answer for `key` and whether it is due for a refresh.

        An answer whose epoch moved is never returned. One past its lifetime is returned as due
        for a further `grace_seconds` (never past a lifetime the answer brought itself, such as
        a token's expiry): the fast path serves it while `refresh` asks the database.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, epoch, deadline, grace_deadline = entry
        now = self.clock()
        if epoch != self.epochs.read(self.epoch) or now > grace_deadline:
            del self._entries[key]
            return None
        return value, now > deadline

    def put(self, key: K, value: V, *, epoch: int, ttl_seconds: float | None = None) -> None:
        """Remember `value`, computed under `epoch`, for at most `ttl_seconds`."""
        ttl = self.ttl_seconds if ttl_seconds is None else min(ttl_seconds, self.ttl_seconds)
        if ttl <= 0:
            return
        now = self.clock()
        own_end = math.inf if ttl_seconds is None else now + ttl_seconds
        deadline = now + ttl
        self._entries[key] = (value, epoch, deadline, min(deadline + self.grace_seconds, own_end))
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def refresh(self, key: K, compute: Callable[[], Awaitable[tuple[V, float | None]]]) -> None:
        """Recompute `key` in the background, once at a time, and remember the new answer.

        If `compute` fails because the database is down, the old answer stays for the rest of
        its grace; if it fails otherwise (a credential revoked behind the app's back), the answer
        is dropped at once, so the next request goes the slow way and gets the error.
        """
        if key in self._refreshing:
            return
        epoch = self.current()

        async def run() -> None:
            try:
                value, ttl_seconds = await compute()
            except Exception as exc:
                if not is_dependency_down(exc):
                    self._entries.pop(key, None)
                log.info("cache_refresh_failed", extra={"error": type(exc).__name__})
            else:
                self.put(key, value, epoch=epoch, ttl_seconds=ttl_seconds)
            finally:
                del self._refreshing[key]

        self._refreshing[key] = asyncio.create_task(run())

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
