"""Answers remembered for database outages: stale-if-error, never stale-while-healthy.

While the database answers, every request is checked against it (revocations and deactivations
work at once). When it cannot be reached, a credential or version resolution that succeeded
within `max_age` still answers, so predictions on cached models keep flowing through a restart
of PostgreSQL (SECURITY.md, degrade matrix).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from modelyard.errors import is_dependency_down

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_ENTRIES = 10_000


class OutageCache(Generic[K, V]):
    """A bounded map of recent successful answers, read only when the database is down."""

    def __init__(self, *, max_age_seconds: float, max_entries: int = MAX_ENTRIES) -> None:
        self.max_age_seconds = max_age_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    async def call(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        """Return `fetch()`, remembered under `key`; on an outage, the remembered answer.

        Any other failure (a revoked key, a missing model) forgets `key` and propagates.
        """
        try:
            value = await fetch()
        except Exception as exc:
            if is_dependency_down(exc):
                remembered = self._recall(key)
                if remembered is not None:
                    return remembered
            else:
                self._entries.pop(key, None)
            raise
        self._remember(key, value)
        return value

    def clear(self) -> None:
        """Forget everything (a credential was revoked in this process)."""
        self._entries.clear()

    def _remember(self, key: K, value: V) -> None:
        if self.max_age_seconds <= 0:
            return
        self._entries[key] = (time.monotonic(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def _recall(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > self.max_age_seconds:
            return None
        return entry[1]
