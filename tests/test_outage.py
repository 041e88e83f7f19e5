"""The outage cache answers only while the database is down, and never after a refusal."""

from __future__ import annotations

import pytest

from modelyard.errors import NotFound
from modelyard.outage import OutageCache


class Database:
    """What a fetch sees: a value, a refusal, or an outage."""

    def __init__(self) -> None:
        self.answer: object = "fresh"
        self.calls = 0

    async def fetch(self) -> object:
        self.calls += 1
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


async def test_a_healthy_database_is_always_asked() -> None:
    cache: OutageCache[str, object] = OutageCache(max_age_seconds=60)
    db = Database()
    assert await cache.call("k", db.fetch) == "fresh"
    db.answer = "newer"
    assert await cache.call("k", db.fetch) == "newer"
    assert db.calls == 2


async def test_an_outage_answers_with_the_last_success() -> None:
    cache: OutageCache[str, object] = OutageCache(max_age_seconds=60)
    db = Database()
    await cache.call("k", db.fetch)
    db.answer = ConnectionRefusedError()
    assert await cache.call("k", db.fetch) == "fresh"
    with pytest.raises(ConnectionRefusedError):
        await cache.call("never-seen", db.fetch)


async def test_a_refusal_is_never_overridden_by_an_earlier_success() -> None:
    cache: OutageCache[str, object] = OutageCache(max_age_seconds=60)
    db = Database()
    await cache.call("k", db.fetch)
    db.answer = NotFound("revoked")
    with pytest.raises(NotFound):
        await cache.call("k", db.fetch)
    db.answer = ConnectionRefusedError()
    with pytest.raises(ConnectionRefusedError):
        await cache.call("k", db.fetch)


async def test_clear_and_a_zero_age_remember_nothing() -> None:
    db = Database()
    cleared: OutageCache[str, object] = OutageCache(max_age_seconds=60)
    await cleared.call("k", db.fetch)
    cleared.clear()
    off: OutageCache[str, object] = OutageCache(max_age_seconds=0)
    await off.call("k", db.fetch)
    db.answer = ConnectionRefusedError()
    for cache in (cleared, off):
        with pytest.raises(ConnectionRefusedError):
            await cache.call("k", db.fetch)


async def test_the_cache_is_bounded() -> None:
    cache: OutageCache[int, object] = OutageCache(max_age_seconds=60, max_entries=3)
    db = Database()
    for key in range(5):
        await cache.call(key, db.fetch)
    db.answer = ConnectionRefusedError()
    with pytest.raises(ConnectionRefusedError):
        await cache.call(0, db.fetch)
    assert await cache.call(4, db.fetch) == "fresh"
