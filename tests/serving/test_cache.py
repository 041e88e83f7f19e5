"""The model cache: LRU by count and bytes, one load per version, invalidation, metrics."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from modelyard.config import Settings
from modelyard.observability.metrics import Metrics
from modelyard.serving.cache import ModelCache
from modelyard.serving.runtimes import Runtime
from tests.serving.fakes import FakeRuntime

MiB = 1024**2


def make_cache(*, max_models: int = 10, max_bytes: int = 100 * MiB) -> ModelCache:
    return ModelCache(max_models=max_models, max_bytes=max_bytes, metrics=Metrics())


def sample(cache: ModelCache, name: str) -> float | None:
    """Read one series of the metrics the cache was built with."""
    return cache.metrics.registry.get_sample_value(name)


def loader(runtime: Runtime):
    async def load() -> Runtime:
        return runtime

    return load


async def test_miss_loads_then_hit_returns_the_same_runtime() -> None:
    cache = make_cache()
    version = uuid.uuid4()
    runtime = FakeRuntime()

    first = await cache.get(version, loader(runtime))
    second = await cache.get(version, loader(FakeRuntime()))

    assert first is runtime
    assert second is runtime
    assert cache.peek(version) is runtime
    assert sample(cache, "modelyard_model_cache_misses_total") == 1
    assert sample(cache, "modelyard_model_cache_hits_total") == 1


async def test_count_bound_evicts_the_least_recently_used() -> None:
    cache = make_cache(max_models=2)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await cache.get(a, loader(FakeRuntime()))
    await cache.get(b, loader(FakeRuntime()))
    await cache.get(a, loader(FakeRuntime()))  # a is now the most recently used

    await cache.get(c, loader(FakeRuntime()))

    assert cache.peek(b) is None
    assert cache.peek(a) is not None
    assert cache.peek(c) is not None
    assert len(cache) == 2
    assert sample(cache, "modelyard_model_cache_evictions_total") == 1
    assert sample(cache, "modelyard_model_cache_models") == 2


async def test_byte_bound_evicts_until_the_total_fits() -> None:
    cache = make_cache(max_bytes=10 * MiB)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await cache.get(a, loader(FakeRuntime(nbytes=4 * MiB)))
    await cache.get(b, loader(FakeRuntime(nbytes=4 * MiB)))

    await cache.get(c, loader(FakeRuntime(nbytes=7 * MiB)))

    assert cache.peek(a) is None
    assert cache.peek(b) is None
    assert cache.peek(c) is not None
    assert cache.nbytes == 7 * MiB
    assert sample(cache, "modelyard_model_cache_evictions_total") == 2
    assert sample(cache, "modelyard_model_cache_bytes") == 7 * MiB


async def test_model_bigger_than_the_byte_bound_is_kept_alone() -> None:
    cache = make_cache(max_bytes=10 * MiB)
    small, huge = uuid.uuid4(), uuid.uuid4()
    await cache.get(small, loader(FakeRuntime(nbytes=MiB)))

    await cache.get(huge, loader(FakeRuntime(nbytes=50 * MiB)))

    assert cache.peek(small) is None
    assert cache.peek(huge) is not None
    assert len(cache) == 1


async def test_peek_never_loads_and_counts_nothing() -> None:
    cache = make_cache()

    assert cache.peek(uuid.uuid4()) is None
    assert sample(cache, "modelyard_model_cache_misses_total") == 0
    assert sample(cache, "modelyard_model_cache_hits_total") == 0


async def test_peek_counts_as_use_for_lru_order() -> None:
    cache = make_cache(max_models=2)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await cache.get(a, loader(FakeRuntime()))
    await cache.get(b, loader(FakeRuntime()))
    cache.peek(a)

    await cache.get(c, loader(FakeRuntime()))

    assert cache.peek(a) is not None
    assert cache.peek(b) is None


async def test_concurrent_gets_share_one_load() -> None:
    cache = make_cache()
    version = uuid.uuid4()
    release = asyncio.Event()
    runtime = FakeRuntime()
    loads = 0

    async def load() -> Runtime:
        nonlocal loads
        loads += 1
        await release.wait()
        return runtime

    waiters = [asyncio.create_task(cache.get(version, load)) for _ in range(20)]
    await asyncio.sleep(0)  # let every waiter reach the cache before the load finishes
    release.set()
    results = await asyncio.gather(*waiters)

    assert loads == 1
    assert all(result is runtime for result in results)
    assert sample(cache, "modelyard_model_cache_misses_total") == 1
    assert sample(cache, "modelyard_model_cache_hits_total") == 0


async def test_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    cache = make_cache()
    version = uuid.uuid4()
    release = asyncio.Event()

    async def failing() -> Runtime:
        await release.wait()
        raise RuntimeError("store down")

    waiters = [asyncio.create_task(cache.get(version, failing)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in results)
    assert cache.peek(version) is None
    runtime = FakeRuntime()
    assert await cache.get(version, loader(runtime)) is runtime
    assert sample(cache, "modelyard_model_cache_misses_total") == 2


async def test_cancelled_waiter_does_not_cancel_the_shared_load() -> None:
    cache = make_cache()
    version = uuid.uuid4()
    release = asyncio.Event()
    runtime = FakeRuntime()

    async def load() -> Runtime:
        await release.wait()
        return runtime

    quitter = asyncio.create_task(cache.get(version, load))
    stayer = asyncio.create_task(cache.get(version, load))
    await asyncio.sleep(0)
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    release.set()

    assert await stayer is runtime
    assert cache.peek(version) is runtime


async def test_load_whose_waiters_all_left_is_still_cached() -> None:
    cache = make_cache()
    version = uuid.uuid4()
    release = asyncio.Event()
    loaded = asyncio.Event()
    runtime = FakeRuntime()

    async def load() -> Runtime:
        await release.wait()
        loaded.set()
        return runtime

    waiter = asyncio.create_task(cache.get(version, load))
    await asyncio.sleep(0)
    waiter.cancel()
    release.set()
    await loaded.wait()

    assert cache.peek(version) is runtime


def test_from_settings_takes_the_cache_bounds(tmp_path) -> None:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        model_cache_max_models=3,
        model_cache_max_bytes=64 * MiB,
    )

    cache = ModelCache.from_settings(settings, Metrics())

    assert (cache.max_models, cache.max_bytes) == (3, 64 * MiB)
