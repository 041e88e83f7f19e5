"""The hot path's epoch caches: lifetimes, epochs, and one computation per key at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelyard.changes.epochs import Epoch, Epochs
from modelyard.changes.hotcache import EpochCache


@pytest.fixture
def epochs(tmp_path: Path) -> Epochs:
    return Epochs(tmp_path)


async def test_concurrent_misses_compute_once(epochs: Epochs) -> None:
    cache: EpochCache[str, int] = EpochCache(epochs, Epoch.REGISTRY, ttl_seconds=60)
    release = asyncio.Event()
    calls = 0

    async def compute() -> tuple[int, float | None]:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42, None

    waiters = [asyncio.create_task(cache.fill("k", compute)) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == [42] * 20
    assert calls == 1
    assert cache.get("k") == 42


async def test_a_failed_computation_lets_the_next_waiter_compute(epochs: Epochs) -> None:
    cache: EpochCache[str, int] = EpochCache(epochs, Epoch.REGISTRY, ttl_seconds=60)
    release = asyncio.Event()
    calls = 0

    async def compute() -> tuple[int, float | None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()
            raise RuntimeError("database said no")
        return calls, None

    first = asyncio.create_task(cache.fill("k", compute))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.fill("k", compute))
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(RuntimeError, match="database said no"):
        await first
    assert await second == 2
    assert await cache.fill("k", compute) == 2  # remembered now
    assert calls == 2


async def test_a_bump_during_the_computation_is_not_remembered(epochs: Epochs) -> None:
    cache: EpochCache[str, int] = EpochCache(epochs, Epoch.AUTH, ttl_seconds=60)

    async def compute() -> tuple[int, float | None]:
        epochs.bump(Epoch.AUTH)  # a revocation committed while the answer was computed
        return 1, None

    assert await cache.fill("k", compute) == 1
    assert cache.get("k") is None


async def test_an_answer_with_no_lifetime_left_is_not_remembered(epochs: Epochs) -> None:
    cache: EpochCache[str, int] = EpochCache(epochs, Epoch.AUTH, ttl_seconds=60)

    async def compute() -> tuple[int, float | None]:
        return 1, -5.0  # a token that expired while it was checked

    assert await cache.fill("k", compute) == 1
    assert cache.get("k") is None


class Clock:
    """`time.monotonic` for the cache, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_an_answer_past_its_lifetime_is_due_for_its_grace_then_gone(
    epochs: Epochs, clock: Clock
) -> None:
    cache: EpochCache[str, int] = EpochCache(
        epochs, Epoch.REGISTRY, ttl_seconds=5, grace_seconds=2, clock=clock
    )
    cache.put("k", 1, epoch=cache.current())
    assert cache.lookup("k") == (1, False)
    clock.now += 6
    assert cache.lookup("k") == (1, True)
    assert cache.get("k") is None  # the slow path never takes a stale answer
    assert cache.lookup("k") == (1, True)
    clock.now += 2
    assert cache.lookup("k") is None


def test_a_lifetime_of_the_answers_own_gets_no_grace(epochs: Epochs, clock: Clock) -> None:
    cache: EpochCache[str, int] = EpochCache(
        epochs, Epoch.AUTH, ttl_seconds=60, grace_seconds=5, clock=clock
    )
    cache.put("token", 1, epoch=cache.current(), ttl_seconds=10)  # the token expires in 10 s
    clock.now += 9
    assert cache.lookup("token") == (1, False)
    clock.now += 2
    assert cache.lookup("token") is None


def test_an_epoch_bump_drops_a_due_answer(epochs: Epochs, clock: Clock) -> None:
    cache: EpochCache[str, int] = EpochCache(epochs, Epoch.AUTH, ttl_seconds=5, clock=clock)
    cache.put("k", 1, epoch=cache.current())
    clock.now += 6
    epochs.bump(Epoch.AUTH)
    assert cache.lookup("k") is None


async def test_refresh_replaces_a_due_answer_once_at_a_time(epochs: Epochs, clock: Clock) -> None:
    cache: EpochCache[str, int] = EpochCache(epochs, Epoch.REGISTRY, ttl_seconds=5, clock=clock)
    cache.put("k", 1, epoch=cache.current())
    clock.now += 6
    release = asyncio.Event()
    calls = 0

    async def compute() -> tuple[int, float | None]:
        nonlocal calls
        calls += 1
        await release.wait()
        return 2, None

    for _ in range(10):
        cache.refresh("k", compute)
    await asyncio.sleep(0)
    assert cache.lookup("k") == (1, True)  # still served while the refresh runs
    release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert calls == 1
    assert cache.lookup("k") == (2, False)


@pytest.mark.parametrize(
    ("error", "kept"), [(ConnectionRefusedError(), True), (ValueError("revoked"), False)]
)
async def test_a_failed_refresh_keeps_the_answer_only_through_an_outage(
    epochs: Epochs, clock: Clock, error: Exception, kept: bool
) -> None:
    cache: EpochCache[str, int] = EpochCache(epochs, Epoch.AUTH, ttl_seconds=5, clock=clock)
    cache.put("k", 1, epoch=cache.current())
    clock.now += 6

    async def compute() -> tuple[int, float | None]:
        raise error

    cache.refresh("k", compute)
    for _ in range(3):
        await asyncio.sleep(0)
    assert cache.lookup("k") == ((1, True) if kept else None)
