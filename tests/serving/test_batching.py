"""Adaptive batching: lone requests run at once, queued ones share a call, errors stay contained."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from modelyard.config import Settings
from modelyard.observability.metrics import Metrics
from modelyard.serving.batching import Batcher, BatchResult
from modelyard.serving.runtimes import Runtime
from tests.serving.fakes import FakeClassifier, FakeNetwork, FakeRuntime

MakeBatcher = Callable[..., Batcher]
# A safety net so that a broken batcher fails the test instead of hanging it; never a timing.
HANG_SECONDS = 30


@pytest.fixture
async def make_batcher() -> AsyncIterator[MakeBatcher]:
    """Build batchers (max_rows 64, no wait, by default) and close them after the test."""
    made: list[Batcher] = []

    def make(**overrides: Any) -> Batcher:
        values: dict[str, Any] = {"max_rows": 64, "max_wait_ms": 0, "metrics": Metrics()}
        values.update(overrides)
        batcher = Batcher(**values)
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        await batcher.aclose()


def rows(start: int, count: int, width: int = 2) -> npt.NDArray[np.float64]:
    """Rows whose first column counts up from `start`: the fake's prediction names the row."""
    x = np.zeros((count, width))
    x[:, 0] = np.arange(start, start + count)
    return x


def sample(batcher: Batcher, name: str, labels: dict[str, str] | None = None) -> float | None:
    return batcher.metrics.registry.get_sample_value(name, labels or {})


async def blocked_first_call(
    batcher: Batcher, runtime: FakeRuntime, key: str = "v1"
) -> asyncio.Task[BatchResult]:
    """Start a one-row predict and return once the runtime is inside it, blocked on its gate."""
    first = asyncio.create_task(batcher.predict(key, runtime, rows(1000, 1)))
    await asyncio.to_thread(runtime.entered.wait)
    return first


async def submit(
    batcher: Batcher, runtime: Runtime, *inputs: npt.NDArray[Any], key: str = "v1"
) -> list[asyncio.Task[BatchResult]]:
    """Start predicts and let each reach the batcher's queue."""
    tasks = [asyncio.create_task(batcher.predict(key, runtime, x)) for x in inputs]
    await asyncio.sleep(0)  # one loop turn: every task runs up to its wait on the batcher
    return tasks


async def test_lone_request_runs_alone(make_batcher: MakeBatcher) -> None:
    batcher = make_batcher()
    runtime = FakeRuntime()

    result = await batcher.predict("v1", runtime, rows(0, 3))

    assert result.batch_rows == 3
    assert result.predictions.tolist() == [0, 1, 2]
    assert result.probabilities is None
    assert result.inference_seconds >= 0
    assert runtime.calls == [3]


async def test_requests_queued_behind_a_call_share_the_next_one(make_batcher: MakeBatcher) -> None:
    batcher = make_batcher()
    gate = threading.Event()
    runtime = FakeClassifier(gate=gate)
    first = await blocked_first_call(batcher, runtime)
    inputs = [rows(0, 1), rows(10, 3), rows(20, 2), rows(30, 1)]
    queued = await submit(batcher, runtime, *inputs)

    gate.set()
    async with asyncio.timeout(HANG_SECONDS):
        results = await asyncio.gather(*queued)

    assert (await first).batch_rows == 1
    assert runtime.calls == [1, 7]
    for x, result in zip(inputs, results, strict=True):
        assert result.predictions.tolist() == x[:, 0].astype(int).tolist()
        assert result.probabilities is not None
        assert result.probabilities[:, 1].tolist() == x[:, 0].tolist()
        assert result.batch_rows == 7
    assert sample(batcher, "modelyard_batch_requests_count") == 2
    assert sample(batcher, "modelyard_batch_requests_sum") == 5
    assert sample(batcher, "modelyard_batch_rows_sum") == 8
    count = sample(batcher, "modelyard_inference_duration_seconds_count", {"framework": "sklearn"})
    assert count == 2


async def test_batches_respect_max_rows_and_never_split_a_request(
    make_batcher: MakeBatcher,
) -> None:
    batcher = make_batcher(max_rows=4)
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)
    first = await blocked_first_call(batcher, runtime)
    inputs = [rows(0, 2), rows(10, 2), rows(20, 6), rows(30, 2)]
    queued = await submit(batcher, runtime, *inputs)

    gate.set()
    async with asyncio.timeout(HANG_SECONDS):
        results = await asyncio.gather(first, *queued)

    assert runtime.calls == [1, 4, 6, 2]
    for x, result in zip(inputs, results[1:], strict=True):
        assert result.predictions.tolist() == x[:, 0].tolist()


async def test_batches_respect_the_runtimes_own_row_bound(make_batcher: MakeBatcher) -> None:
    # An ONNX graph's cost estimate bounds its calls' rows below the batcher's (#25).
    batcher = make_batcher(max_rows=64)
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)
    runtime.max_rows = 3
    first = await blocked_first_call(batcher, runtime)
    inputs = [rows(0, 2), rows(10, 1), rows(20, 2)]
    queued = await submit(batcher, runtime, *inputs)

    gate.set()
    async with asyncio.timeout(HANG_SECONDS):
        results = await asyncio.gather(first, *queued)

    assert runtime.calls == [1, 3, 2]
    for x, result in zip(inputs, results[1:], strict=True):
        assert result.predictions.tolist() == x[:, 0].tolist()


async def test_requests_of_different_widths_are_not_merged(make_batcher: MakeBatcher) -> None:
    batcher = make_batcher()
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)
    first = await blocked_first_call(batcher, runtime)
    inputs = [rows(0, 2, width=2), rows(10, 3, width=3), rows(20, 2, width=2)]
    queued = await submit(batcher, runtime, *inputs)

    gate.set()
    async with asyncio.timeout(HANG_SECONDS):
        results = await asyncio.gather(first, *queued)

    assert runtime.calls == [1, 4, 3]
    for x, result in zip(inputs, results[1:], strict=True):
        assert result.predictions.tolist() == x[:, 0].tolist()


async def test_different_keys_are_not_merged(make_batcher: MakeBatcher) -> None:
    batcher = make_batcher(inline_below_seconds=0)
    runtime = FakeRuntime()

    results = await asyncio.gather(
        batcher.predict("v1", runtime, rows(0, 1)), batcher.predict("v2", runtime, rows(5, 1))
    )

    assert [r.batch_rows for r in results] == [1, 1]
    assert sorted(runtime.calls) == [1, 1]


async def test_predict_error_reaches_every_waiter_of_the_call_and_the_next_call_works(
    make_batcher: MakeBatcher,
) -> None:
    batcher = make_batcher()
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)
    first = await blocked_first_call(batcher, runtime)
    queued = await submit(batcher, runtime, rows(0, 1), rows(10, 2), rows(20, 1))
    runtime.error = ValueError("model broke")

    gate.set()
    async with asyncio.timeout(HANG_SECONDS):
        outcomes = await asyncio.gather(first, *queued, return_exceptions=True)

    assert all(isinstance(o, ValueError) for o in outcomes)
    assert runtime.calls == [1, 4]
    runtime.error = None
    result = await batcher.predict("v1", runtime, rows(7, 1))
    assert result.predictions.tolist() == [7]


async def test_cancelled_waiter_is_dropped_and_the_others_are_answered(
    make_batcher: MakeBatcher,
) -> None:
    batcher = make_batcher()
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)
    first = await blocked_first_call(batcher, runtime)
    kept_a, dropped, kept_b = await submit(batcher, runtime, rows(0, 1), rows(10, 5), rows(20, 2))

    dropped.cancel()
    first.cancel()  # its call is already running: it finishes, the answer goes nowhere
    gate.set()
    async with asyncio.timeout(HANG_SECONDS):
        a, b = await asyncio.gather(kept_a, kept_b)

    assert a.predictions.tolist() == [0]
    assert b.predictions.tolist() == [20, 21]
    assert runtime.calls == [1, 3]
    assert dropped.cancelled()
    assert first.cancelled()


async def test_queued_requests_wait_for_company_only_up_to_max_rows(
    make_batcher: MakeBatcher,
) -> None:
    # A wait far longer than the test: the batch must leave as soon as it is full.
    batcher = make_batcher(max_rows=4, max_wait_ms=600_000)
    gate = threading.Event()
    runtime = FakeRuntime(gate=gate)
    first = await blocked_first_call(batcher, runtime)
    (early,) = await submit(batcher, runtime, rows(0, 1))
    gate.set()
    async with asyncio.timeout(HANG_SECONDS):
        await first  # the batcher has taken `early` and now waits for more

        late = await submit(batcher, runtime, rows(10, 2), rows(20, 1))
        results = await asyncio.gather(early, *late)

    assert runtime.calls == [1, 4]
    assert [r.predictions.tolist() for r in results] == [[0], [10, 11], [20]]


async def test_first_call_of_a_runtime_leaves_the_event_loop(make_batcher: MakeBatcher) -> None:
    batcher = make_batcher(inline_below_seconds=float("inf"))
    runtime = FakeRuntime()

    await batcher.predict("v1", runtime, rows(0, 1))

    assert runtime.threads[0] != threading.get_ident()
    assert batcher.runs_inline(runtime, 1)  # its cost is known now


async def test_cheap_runtime_runs_on_the_event_loop_after_its_first_call(
    make_batcher: MakeBatcher,
) -> None:
    batcher = make_batcher(inline_below_seconds=float("inf"))
    runtime = FakeRuntime()
    await batcher.predict("v1", runtime, rows(0, 1))

    await batcher.predict("v1", runtime, rows(1, 1))

    assert runtime.threads[1] == threading.get_ident()


async def test_cheap_runtime_whose_cost_follows_its_values_stays_off_the_event_loop(
    make_batcher: MakeBatcher,
) -> None:
    # An ONNX graph cheap on every call so far can still be slow on the next call's values.
    batcher = make_batcher(inline_below_seconds=float("inf"))
    runtime = FakeRuntime()
    runtime.is_cost_bounded_by_shape = False

    for start in range(3):
        await batcher.predict("v1", runtime, rows(start, 1))

    assert threading.get_ident() not in runtime.threads
    assert not batcher.runs_inline(runtime, 1)


async def test_costly_runtime_stays_off_the_event_loop(make_batcher: MakeBatcher) -> None:
    batcher = make_batcher(inline_below_seconds=0)
    runtime = FakeRuntime()

    for start in range(3):
        await batcher.predict("v1", runtime, rows(start, 1))

    assert threading.get_ident() not in runtime.threads


async def test_request_larger_than_a_batch_leaves_the_loop_even_for_a_cheap_runtime(
    make_batcher: MakeBatcher,
) -> None:
    batcher = make_batcher(max_rows=4, inline_below_seconds=float("inf"))
    runtime = FakeRuntime()
    await batcher.predict("v1", runtime, rows(0, 1))

    result = await batcher.predict("v1", runtime, rows(0, 10))

    assert result.batch_rows == 10
    assert runtime.threads[1] != threading.get_ident()
    assert batcher.runs_inline(runtime, 4)
    assert not batcher.runs_inline(runtime, 5)


async def test_inline_predict_error_reaches_the_caller(make_batcher: MakeBatcher) -> None:
    batcher = make_batcher(inline_below_seconds=float("inf"))
    runtime = FakeRuntime()
    await batcher.predict("v1", runtime, rows(0, 1))
    runtime.error = ValueError("model broke")

    with pytest.raises(ValueError, match="model broke"):
        await batcher.predict("v1", runtime, rows(0, 1))

    assert runtime.threads[1] == threading.get_ident()


def tensors(start: int, count: int, width: int = 2) -> dict[str, npt.NDArray[np.float64]]:
    """A FakeNetwork's inputs of `count` rows: `a`'s first column counts up from `start`."""
    a = rows(start, count, width)
    return {"a": a, "b": np.ones_like(a)}


async def blocked_network_call(batcher: Batcher, network: FakeNetwork) -> asyncio.Task[Any]:
    first = asyncio.create_task(batcher.run("v1", network, tensors(1000, 1), 1))
    await asyncio.to_thread(network.entered.wait)
    return first


async def test_network_requests_queued_behind_a_call_are_stacked_along_the_batch_axis(
    make_batcher: MakeBatcher,
) -> None:
    batcher = make_batcher()
    network = FakeNetwork(gate=threading.Event())
    first = await blocked_network_call(batcher, network)
    inputs = [tensors(0, 1), tensors(10, 3), tensors(20, 2)]
    queued = [asyncio.create_task(batcher.run("v1", network, x, len(x["a"]))) for x in inputs]
    await asyncio.sleep(0)

    assert network.gate is not None
    network.gate.set()
    async with asyncio.timeout(HANG_SECONDS):
        results = await asyncio.gather(*queued)

    assert (await first).batch_rows == 1
    assert network.calls == [1, 6]
    for x, result in zip(inputs, results, strict=True):
        assert result.outputs["first"].tolist() == x["a"][:, 0].tolist()
        assert result.outputs["sum"].tolist() == (x["a"] + 1).tolist()
        assert result.batch_rows == 6


async def test_network_requests_of_other_trailing_shapes_are_not_stacked(
    make_batcher: MakeBatcher,
) -> None:
    # Token ids of another sequence length cannot share a tensor with these.
    batcher = make_batcher()
    network = FakeNetwork(gate=threading.Event())
    first = await blocked_network_call(batcher, network)
    inputs = [tensors(0, 2, width=2), tensors(10, 2, width=5), tensors(20, 1, width=2)]
    queued = [asyncio.create_task(batcher.run("v1", network, x, len(x["a"]))) for x in inputs]
    await asyncio.sleep(0)

    assert network.gate is not None
    network.gate.set()
    async with asyncio.timeout(HANG_SECONDS):
        results = await asyncio.gather(first, *queued)

    assert network.calls == [1, 3, 2]
    for x, result in zip(inputs, results[1:], strict=True):
        assert result.outputs["sum"].tolist() == (x["a"] + 1).tolist()


async def test_network_without_a_batch_axis_runs_one_request_a_call(
    make_batcher: MakeBatcher,
) -> None:
    batcher = make_batcher()
    network = FakeNetwork(has_batch_axis=False, gate=threading.Event())
    first = await blocked_network_call(batcher, network)
    inputs = [tensors(0, 1), tensors(10, 1), tensors(20, 1)]
    queued = [asyncio.create_task(batcher.run("v1", network, x, 1)) for x in inputs]
    await asyncio.sleep(0)

    assert network.gate is not None
    network.gate.set()
    async with asyncio.timeout(HANG_SECONDS):
        results = await asyncio.gather(first, *queued)

    assert network.calls == [1, 1, 1, 1]
    assert [r.outputs["first"].tolist() for r in results[1:]] == [[0.0], [10.0], [20.0]]


async def test_from_settings_takes_the_batching_settings(tmp_path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, batch_max_size=16, batch_max_wait_ms=2.5)

    batcher = Batcher.from_settings(settings, Metrics())

    assert (batcher.max_rows, batcher.max_wait_seconds) == (16, 0.0025)
    await batcher.aclose()
