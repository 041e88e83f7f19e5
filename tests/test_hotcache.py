"""The hot path's epoch caches: lifetimes, epochs, and one computation per key at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelyard.epochs import Epoch, Epochs
from modelyard.hotcache import EpochCache


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
