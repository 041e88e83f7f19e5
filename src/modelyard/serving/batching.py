"""Adaptive micro-batching: concurrent predicts for one model version share one predict call.

"Natural" batching, like Triton's dynamic batcher with no queue delay: a request for a version
with no predict call in flight runs at once; requests that arrive while one is in flight queue,
and the next call takes them together. A lone request never waits for company.

Where a call runs is adaptive too. A thread hop costs ~50-100 us, as much as a logistic
regression's whole predict, while a 100-tree forest's ~3 ms would stall every other request if
it ran on the event loop. So each runtime's recent call cost is tracked, and cheap calls run on
the loop, the rest on a small thread pool. Only for runtimes whose cost the input's shape fixes
(`Runtime.is_cost_bounded_by_shape`): for the others, past calls do not predict the next.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections import deque
from collections.abc import Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Self

import numpy as np
import numpy.typing as npt

from modelyard.config import Settings
from modelyard.observability.metrics import Metrics
from modelyard.serving.runtimes import Runtime

# Calls expected to take less than this run on the event loop: 1 ms of stall is ~10x a thread
# hop, and at the targets of docs/architecture/design.md (p50 <= 0.5 ms for a cached linear model) a hop alone
# would take a fifth of the budget. Forests (~3 ms a call) stay off the loop.
INLINE_BELOW_SECONDS: Final = 0.001
# Weight of the newest call in a runtime's moving average of call cost: a handful of calls
# settle it, one slow call (a GC pause, a cold cache) does not flip it.
COST_SMOOTHING: Final = 0.2


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One request's share of a batched predict call."""

    predictions: npt.NDArray[Any]
    probabilities: npt.NDArray[Any] | None
    inference_seconds: float
    batch_rows: int


@dataclass(frozen=True, slots=True)
class TensorResult:
    """One request's share of a batched network call: its rows of every output tensor."""

    outputs: dict[str, npt.NDArray[Any]]
    inference_seconds: float
    batch_rows: int


@dataclass(slots=True)
class _Request:
    """A table `x` for `Runtime.predict`, or a network's `feeds` for `Runtime.run`."""

    runtime: Runtime
    x: npt.NDArray[Any] | None
    feeds: Mapping[str, npt.NDArray[Any]] | None
    rows: int
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Lane:
    """The requests of one key waiting for the call in flight to finish."""

    queue: deque[_Request] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


def _timed_run(
    runtime: Runtime, feeds: Mapping[str, npt.NDArray[Any]], rows: int, *, stacked: bool
) -> tuple[dict[str, npt.NDArray[Any]], float]:
    """Run a network and measure the call; stacked calls must answer a row per input row."""
    started = time.perf_counter()
    outputs = runtime.run(feeds)
    seconds = time.perf_counter() - started
    if stacked and any(len(value) != rows for value in outputs.values()):
        raise RuntimeError(f"the network did not answer one row per input row ({rows} rows)")
    return outputs, seconds


def _can_stack(head: _Request, request: _Request) -> bool:
    """Tell whether `request` may share `head`'s call: the same runtime and kind of input, the
    same row width and dtype; networks only along a batch dimension, every input alike."""
    if request.runtime is not head.runtime:
        return False
    if head.x is not None:
        return (
            request.x is not None
            and request.x.shape[1:] == head.x.shape[1:]
            and request.x.dtype == head.x.dtype
        )
    if not head.runtime.has_batch_axis or head.feeds is None or request.feeds is None:
        return False
    for name, value in head.feeds.items():
        other = request.feeds.get(name)
        if other is None or other.shape[1:] != value.shape[1:] or other.dtype != value.dtype:
            return False
    return True


def _timed_predict(
    runtime: Runtime, x: npt.NDArray[Any]
) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None, float]:
    """Predict and measure the call itself (in the thread that runs it, not the hop)."""
    started = time.perf_counter()
    predictions, probabilities = runtime.predict(x)
    seconds = time.perf_counter() - started
    if len(predictions) != len(x) or (probabilities is not None and len(probabilities) != len(x)):
        raise RuntimeError(f"model answered {len(predictions)} predictions for {len(x)} rows")
    return predictions, probabilities, seconds


class Batcher:
    """Merges concurrent predict calls for the same version into one call; a lone call runs at once.

    Requests are merged only when they have the same runtime object, row width and dtype, up to
    `max_rows` rows per call; a request with more rows runs alone, never split. Networks' named
    tensors (`run`) are stacked along their batch dimension, every input alike, and only for
    networks that have one (`Runtime.has_batch_axis`); others run one request a call. Once
    requests are queued, a call may wait up to `max_wait_ms` for more (0: never).
    """

    def __init__(
        self,
        *,
        max_rows: int,
        max_wait_ms: float,
        metrics: Metrics,
        threads: int = 2,
        inline_below_seconds: float = INLINE_BELOW_SECONDS,
    ) -> None:
        self.max_rows = max_rows
        self.max_wait_seconds = max_wait_ms / 1000
        self.inline_below_seconds = inline_below_seconds
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="modelyard-predict"
        )
        # A lane exists exactly while a drain task works through its key's requests.
        self._lanes: dict[Hashable, _Lane] = {}
        self._drains: set[asyncio.Task[None]] = set()
        # Moving average of each runtime's call cost; weak, so an evicted runtime's entry goes.
        self._costs: weakref.WeakKeyDictionary[Runtime, float] = weakref.WeakKeyDictionary()
        self._inference_time: dict[str, Any] = {}

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> Self:
        """Build the batcher from the batching settings."""
        return cls(
            max_rows=settings.batch_max_size,
            max_wait_ms=settings.batch_max_wait_ms,
            metrics=metrics,
        )

    async def predict(self, key: Hashable, runtime: Runtime, x: npt.NDArray[Any]) -> BatchResult:
        """Predict the rows of `x` (2-D, of `runtime.input_dtype`), batched with others of `key`.

        Raises:
            Exception: whatever the runtime's predict raised, for every request of that call.
        """
        lane = self._lanes.get(key)
        if lane is None and self.runs_inline(runtime, len(x)):
            # Nothing in flight for this key and the call is cheap: answer now, no task, no hop.
            predictions, probabilities, seconds = _timed_predict(runtime, x)
            self._observe(runtime, seconds, len(x), 1)
            return BatchResult(predictions, probabilities, seconds, len(x))
        loop = asyncio.get_running_loop()
        request = _Request(runtime, x, None, len(x), loop.create_future())
        result: BatchResult = await self._enqueue(key, lane, request)
        return result

    async def run(
        self, key: Hashable, runtime: Runtime, feeds: Mapping[str, npt.NDArray[Any]], rows: int
    ) -> TensorResult:
        """Run a network on named tensors of `rows` rows, stacked with others of `key` if it has
        a batch dimension; always on the predict threads (a network's call is never cheap).

        Raises:
            Exception: whatever the runtime's run raised, for every request of that call.
        """
        loop = asyncio.get_running_loop()
        request = _Request(runtime, None, feeds, rows, loop.create_future())
        result: TensorResult = await self._enqueue(key, self._lanes.get(key), request)
        return result

    async def _enqueue(self, key: Hashable, lane: _Lane | None, request: _Request) -> Any:
        loop = asyncio.get_running_loop()
        if lane is None:
            lane = self._lanes[key] = _Lane()
            lane.queue.append(request)
            drain = loop.create_task(self._drain(key, lane))
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        else:
            lane.queue.append(request)
            lane.arrived.set()
        # A cancelled caller cancels only its own future: the drain skips or ignores it.
        return await request.future

    def runs_inline(self, runtime: Runtime, rows: int) -> bool:
        """Tell whether a call of `rows` rows to `runtime` would run on the event loop.

        Only runtimes whose cost is fixed by the input's shape (past calls predict the next one;
        an ONNX graph or a deep tree made cheap calls on zeros, then stalled the loop on chosen
        values), with a measured cost below the threshold, and only calls no larger than a
        batch: the average was learnt from such calls, and a 10,000-row request costs more.
        """
        if not runtime.is_cost_bounded_by_shape:
            return False
        cost = self._costs.get(runtime)
        return cost is not None and cost < self.inline_below_seconds and rows <= self.max_rows

    async def _drain(self, key: Hashable, lane: _Lane) -> None:
        """Run the lane's requests in batches until none is left, then retire the lane."""
        is_first = True
        try:
            while lane.queue:
                batch, rows = self._take(lane)
                if not batch:
                    continue
                if not is_first and self.max_wait_seconds > 0 and rows < self.max_rows:
                    rows = await self._wait_for_more(lane, batch, rows)
                is_first = False
                await self._run(batch, rows)
        finally:
            if self._lanes.get(key) is lane:
                del self._lanes[key]
            # Only left behind when the drain itself was cancelled (aclose).
            for request in lane.queue:
                request.future.cancel()

    def _take(self, lane: _Lane) -> tuple[list[_Request], int]:
        """Pop the oldest live request and every queued request that can share its call."""
        while lane.queue:
            head = lane.queue.popleft()
            if not head.future.done():  # a cancelled caller's request is dropped unrun
                batch = [head]
                return batch, self._extend(lane, batch, head.rows)
        return [], 0

    def _extend(self, lane: _Lane, batch: list[_Request], rows: int) -> int:
        """Move queued requests that fit into `batch`, keeping the others in order."""
        head = batch[0]
        limit = min(self.max_rows, head.runtime.max_rows or self.max_rows)
        kept: deque[_Request] = deque()
        while lane.queue and rows < limit:
            request = lane.queue.popleft()
            if request.future.done():
                continue
            if rows + request.rows <= limit and _can_stack(head, request):
                batch.append(request)
                rows += request.rows
            else:
                kept.append(request)
        kept.extend(lane.queue)
        lane.queue = kept
        return rows

    async def _wait_for_more(self, lane: _Lane, batch: list[_Request], rows: int) -> int:
        """Wait up to max_wait for requests to fill the batch; return its row count."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_seconds
        while rows < self.max_rows:
            lane.arrived.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await lane.arrived.wait()
            except TimeoutError:
                break
            rows = self._extend(lane, batch, rows)
        return rows

    async def _run(self, batch: list[_Request], rows: int) -> None:
        """Make one predict call for the batch and hand each request its rows."""
        if batch[0].feeds is not None:
            await self._run_network(batch, rows)
            return
        runtime = batch[0].runtime
        try:
            tables = [r.x for r in batch if r.x is not None]
            x = tables[0] if len(tables) == 1 else np.concatenate(tables)
            if self.runs_inline(runtime, rows):
                predictions, probabilities, seconds = _timed_predict(runtime, x)
            else:
                loop = asyncio.get_running_loop()
                predictions, probabilities, seconds = await loop.run_in_executor(
                    self._executor, _timed_predict, runtime, x
                )
        except (asyncio.CancelledError, Exception) as exc:
            _fail(batch, exc)
            if isinstance(exc, Exception):
                return
            raise
        self._observe(runtime, seconds, rows, len(batch))
        offset = 0
        for request in batch:
            end = offset + request.rows
            if not request.future.done():
                request.future.set_result(
                    BatchResult(
                        predictions[offset:end],
                        None if probabilities is None else probabilities[offset:end],
                        seconds,
                        rows,
                    )
                )
            offset = end

    async def _run_network(self, batch: list[_Request], rows: int) -> None:
        """Make one network call for the batch (stacked along the batch dimension) and hand
        each request its rows of every output."""
        runtime = batch[0].runtime
        feeds = [r.feeds for r in batch if r.feeds is not None]
        try:
            stacked = feeds[0]
            if len(feeds) > 1:
                stacked = {name: np.concatenate([f[name] for f in feeds]) for name in stacked}
            loop = asyncio.get_running_loop()
            outputs, seconds = await loop.run_in_executor(
                self._executor,
                functools.partial(_timed_run, runtime, stacked, rows, stacked=len(feeds) > 1),
            )
        except (asyncio.CancelledError, Exception) as exc:
            _fail(batch, exc)
            if isinstance(exc, Exception):
                return
            raise
        self._observe(runtime, seconds, rows, len(batch))
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(TensorResult(outputs, seconds, rows))
            return
        offset = 0
        for request in batch:
            end = offset + request.rows
            if not request.future.done():
                shares = {name: value[offset:end] for name, value in outputs.items()}
                request.future.set_result(TensorResult(shares, seconds, rows))
            offset = end

    def _observe(self, runtime: Runtime, seconds: float, rows: int, requests: int) -> None:
        """Record a call in the metrics and, if batch-sized, in the runtime's cost average."""
        if rows <= self.max_rows:
            previous = self._costs.get(runtime)
            self._costs[runtime] = (
                seconds if previous is None else previous + COST_SMOOTHING * (seconds - previous)
            )
        framework = runtime.framework.value
        histogram = self._inference_time.get(framework)
        if histogram is None:
            histogram = self.metrics.inference_time.labels(framework=framework)
            self._inference_time[framework] = histogram
        histogram.observe(seconds)
        self.metrics.batch_rows.observe(rows)
        self.metrics.batch_requests.observe(requests)

    async def aclose(self) -> None:
        """Cancel queued requests and shut the predict threads down (after running calls end)."""
        for drain in list(self._drains):
            drain.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)


def _fail(batch: list[_Request], error: BaseException) -> None:
    """Hand every request of a failed call its error (cancelled with the call when it was)."""
    for request in batch:
        if isinstance(error, asyncio.CancelledError):
            request.future.cancel()
        elif not request.future.done():
            request.future.set_exception(error)
