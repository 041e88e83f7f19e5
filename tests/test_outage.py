"""The outage cache answers only while the database is down, never after a refusal, and never
after its epoch moved (a revocation on any worker of the host)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.changes.epochs import Epoch, Epochs
from modelyard.changes.outage import OutageCache
from modelyard.errors import NotFound

AUTH = Epoch.AUTH


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


@pytest.fixture
def epochs(tmp_path: Path) -> Epochs:
    return Epochs(tmp_path)


def make_cache(epochs: Epochs, **options: int) -> OutageCache[object, object]:
    return OutageCache(epochs, max_age_seconds=options.pop("max_age_seconds", 60), **options)


async def test_a_healthy_database_is_always_asked(epochs: Epochs) -> None:
    cache = make_cache(epochs)
    db = Database()
    assert await cache.call("k", db.fetch, epoch=AUTH) == ("fresh", False)
    db.answer = "newer"
    assert await cache.call("k", db.fetch, epoch=AUTH) == ("newer", False)
    assert db.calls == 2


async def test_an_outage_answers_with_the_last_success_marked_recalled(epochs: Epochs) -> None:
    cache = make_cache(epochs)
    db = Database()
    await cache.call("k", db.fetch, epoch=AUTH)
    db.answer = ConnectionRefusedError()
    assert await cache.call("k", db.fetch, epoch=AUTH) == ("fresh", True)
    with pytest.raises(ConnectionRefusedError):
        await cache.call("never-seen", db.fetch, epoch=AUTH)


async def test_a_refusal_is_never_overridden_by_an_earlier_success(epochs: Epochs) -> None:
    cache = make_cache(epochs)
    db = Database()
    await cache.call("k", db.fetch, epoch=AUTH)
    db.answer = NotFound("revoked")
    with pytest.raises(NotFound):
        await cache.call("k", db.fetch, epoch=AUTH)
    db.answer = ConnectionRefusedError()
    with pytest.raises(ConnectionRefusedError):
        await cache.call("k", db.fetch, epoch=AUTH)


async def test_an_answer_remembered_before_a_bump_on_another_worker_is_not_recalled(
    epochs: Epochs, tmp_path: Path
) -> None:
    cache = make_cache(epochs)
    db = Database()
    await cache.call("k", db.fetch, epoch=AUTH)
    other_worker = Epochs(tmp_path)  # the same file, as another process maps it
    other_worker.bump(AUTH)
    db.answer = ConnectionRefusedError()
    with pytest.raises(ConnectionRefusedError):
        await cache.call("k", db.fetch, epoch=AUTH)


async def test_a_bump_of_another_epoch_leaves_answers_recallable(epochs: Epochs) -> None:
    cache = make_cache(epochs)
    db = Database()
    await cache.call("k", db.fetch, epoch=AUTH)
    epochs.bump(Epoch.REGISTRY)
    db.answer = ConnectionRefusedError()
    assert await cache.call("k", db.fetch, epoch=AUTH) == ("fresh", True)


async def test_a_zero_age_remembers_nothing(epochs: Epochs) -> None:
    db = Database()
    off = make_cache(epochs, max_age_seconds=0)
    await off.call("k", db.fetch, epoch=AUTH)
    db.answer = ConnectionRefusedError()
    with pytest.raises(ConnectionRefusedError):
        await off.call("k", db.fetch, epoch=AUTH)


async def test_the_cache_is_bounded(epochs: Epochs) -> None:
    cache = make_cache(epochs, max_entries=3)
    db = Database()
    for key in range(5):
        await cache.call(key, db.fetch, epoch=AUTH)
    db.answer = ConnectionRefusedError()
    with pytest.raises(ConnectionRefusedError):
        await cache.call(0, db.fetch, epoch=AUTH)
    assert await cache.call(4, db.fetch, epoch=AUTH) == ("fresh", True)
