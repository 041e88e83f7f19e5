"""Answers remembered for database outages: stale-if-error, never stale-while-healthy.

While the database answers, every request is checked against it (revocations and deactivations
work at once). When it cannot be reached, a credential or version resolution that succeeded
within `max_age` still answers, so predictions on cached models keep flowing through a restart
of PostgreSQL (docs/architecture/security-notes.md, degrade matrix) — unless something was revoked or changed since it
was remembered: each answer carries the shared epoch it was fetched under, and one fetched
before a bump (on any worker of the host) is never recalled.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from modelyard.changes.epochs import Epoch, Epochs
from modelyard.errors import is_dependency_down

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_ENTRIES = 10_000


class OutageCache(Generic[K, V]):
    """A bounded map of recent successful answers, read only when the database is down."""

    def __init__(
        self, epochs: Epochs, *, max_age_seconds: float, max_entries: int = MAX_ENTRIES
    ) -> None:
        self.epochs = epochs
        self.max_age_seconds = max_age_seconds
        self.max_entries = max_entries
        # key -> (when remembered, the epoch's value then, the answer)
        self._entries: OrderedDict[K, tuple[float, int, V]] = OrderedDict()

    async def call(
        self, key: K, fetch: Callable[[], Awaitable[V]], *, epoch: Epoch
    ) -> tuple[V, bool]:
        """Return `fetch()` and False, remembering it under `key`; on an outage, the remembered
        answer and True, if `epoch` has not moved since it was fetched.

        A recalled answer is the caller's to use once, never to cache: remembered again, it
        would outlive the outage. Any other failure (a revoked key, a missing model) forgets
        `key` and propagates.
        """
        stamp = self.epochs.read(epoch)
        try:
            value = await fetch()
        except Exception as exc:
            if is_dependency_down(exc):
                remembered = self._recall(key, epoch)
                if remembered is not None:
                    return remembered, True
            else:
                self._entries.pop(key, None)
            raise
        self._remember(key, stamp, value)
        return value, False

    def _remember(self, key: K, stamp: int, value: V) -> None:
        if self.max_age_seconds <= 0:
            return
        self._entries[key] = (time.monotonic(), stamp, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def _recall(self, key: K, epoch: Epoch) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        remembered_at, stamp, value = entry
        if time.monotonic() - remembered_at > self.max_age_seconds or stamp != self.epochs.read(
            epoch
        ):
            del self._entries[key]
            return None
        return value
