"""The ONNX runtime: an ONNX Runtime session with one input tensor, run on one thread.

Every run is bounded where it runs (docs/architecture/security-notes.md, cost that depends on the input): the graph
rules (modelyard.serving.onnx_graph) make a call's cost a function of the input's shape, and
what remains — big constants times many rows — meets a time budget ONNX Runtime enforces
(`RunOptions.terminate`, set by a watchdog thread, checked between nodes and loop iterations)
and a memory cap on the tensors of running inferences (a shared CPU arena, `cap_onnx_memory`).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from modelyard.serving.formats import Framework, ModelFormat, ModelRejected
from modelyard.serving.loader import check_onnx
from modelyard.serving.onnx_cost import CostLimits, OnnxCost, estimate_onnx_cost
from modelyard.serving.runtimes.base import (
    ROWS,
    InferenceLimitExceeded,
    Runtime,
    TensorSpec,
    as_output,
)
from modelyard.serving.sandbox import CLASSIFICATION, TENSOR_DTYPES, describe_onnx

DEFAULT_RUN_TIMEOUT_SECONDS: Final = 10.0
DEFAULT_MEMORY_BYTES: Final = 1024**3
# How ONNX Runtime words a refused allocation: its arena's own check, or C++'s bad_alloc.
_ALLOCATION_FAILURES: Final = (
    "Available memory of",
    "bfc_arena",
    "bad_alloc",
    "Failed to allocate",
)


# What a network may answer: numeric and boolean tensors, and strings.
OUTPUT_DTYPES: Final[dict[str, Any]] = {**TENSOR_DTYPES, "tensor(string)": np.object_}


def _is_tensor(kind: str) -> bool:
    return kind.startswith("tensor(")


# The cap this process's settings ask for, and the one ONNX Runtime has registered: importing
# ONNX Runtime costs ~30 MiB and is deferred to the first ONNX model, so is the arena.
_configured_cap_bytes: int | None = None
# Rows of the calls a busy model makes one after another (the batcher's batches), for the arena
# memory the cache counts (`arena_bytes`); None: its largest call's.
_arena_rows: int | None = None
_registered_cap_bytes: int | None = None
_cap_lock = threading.Lock()


# The request limits and budgets ONNX graphs are estimated against when loaded in this process.
_cost_limits = CostLimits()


def configure_onnx_cost(limits: CostLimits) -> None:
    """Estimate ONNX graphs loaded from now on against `limits` (settings' budgets)."""
    global _cost_limits
    _cost_limits = limits


def configure_onnx_memory(max_bytes: int, *, batch_rows: int | None = None) -> None:
    """Cap ONNX inferences of this process at `max_bytes`, from the first ONNX session on; count
    calls of `batch_rows` rows in the arena memory of a loaded model (`arena_bytes`).

    Imports nothing: `ensure_onnx_memory_cap` registers the arena before the first session.
    """
    global _configured_cap_bytes, _arena_rows
    with _cap_lock:
        _configured_cap_bytes = max_bytes
        _arena_rows = batch_rows
        if _registered_cap_bytes is not None and _registered_cap_bytes != max_bytes:
            cap_onnx_memory(max_bytes)  # already in use: new sessions get the new cap


def ensure_onnx_memory_cap() -> None:
    """Register the configured arena unless one is registered (before creating a session)."""
    with _cap_lock:
        if _registered_cap_bytes is None and _configured_cap_bytes is not None:
            cap_onnx_memory(_configured_cap_bytes)


def cap_onnx_memory(max_bytes: int) -> None:
    """Register the CPU arena every ONNX session of this process allocates from, capped.

    Process-wide: the running inferences of all ONNX models share `max_bytes` (initializers are
    not counted: sessions keep them apart). An allocation past the cap fails the run at once,
    before any work on the tensor; sessions created earlier keep the arena they had. Each run
    also asks the arena to give its free memory back, so one big request does not keep it.
    """
    import onnxruntime as ort

    info = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    # (max_mem, arena_extend_strategy, initial_chunk_size_bytes, max_dead_bytes_per_chunk);
    # -1 keeps ONNX Runtime's default.
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(max_bytes, -1, -1, -1))
    global _registered_cap_bytes
    _registered_cap_bytes = max_bytes


@dataclass(eq=False, slots=True)
class _Watch:
    deadline: float
    options: Any
    is_fired: bool = False
    is_done: bool = False


@dataclass(eq=False)
class _Watchdog:
    """One daemon thread that sets `terminate` on the ONNX runs past their deadline.

    A thread of its own rather than a timer per call (a thread start each) or the event loop
    (whose stall is what the budget protects against).
    """

    _condition: threading.Condition = field(default_factory=threading.Condition)
    _heap: list[tuple[float, int, _Watch]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    _thread: threading.Thread | None = None

    def watch(self, options: Any, seconds: float) -> _Watch:
        """Terminate the runs made with `options` once `seconds` have passed."""
        watch = _Watch(time.monotonic() + seconds, options)
        with self._condition:
            heapq.heappush(self._heap, (watch.deadline, next(self._order), watch))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="modelyard-onnx-watchdog", daemon=True
                )
                self._thread.start()
            self._condition.notify()
        return watch

    def release(self, watch: _Watch) -> None:
        """Forget a watch whose run has ended (its entry leaves the heap when it comes up)."""
        with self._condition:
            watch.is_done = True

    def _run(self) -> None:
        with self._condition:
            while True:
                while self._heap and self._heap[0][2].is_done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._condition.wait()
                    continue
                remaining = self._heap[0][0] - time.monotonic()
                if remaining > 0:
                    self._condition.wait(remaining)
                    continue
                watch = heapq.heappop(self._heap)[2]
                watch.is_fired = True
                watch.options.terminate = True


_WATCHDOG: Final = _Watchdog()


class OnnxRuntime(Runtime):
    """An ONNX Runtime InferenceSession; one run answers both labels and probabilities."""

    framework = Framework.ONNX
    format = ModelFormat.ONNX
    # Even within the graph rules, a few rows can meet big constants (Tile, MatMul); and a
    # budget hit must not stall the event loop: always on the predict threads.
    is_cost_bounded_by_shape = False

    def __init__(
        self,
        session: Any,
        data: bytes,
        *,
        nbytes: int,
        run_timeout_seconds: float = DEFAULT_RUN_TIMEOUT_SECONDS,
        cost_limits: CostLimits | None = None,
    ) -> None:
        # The probe's description (one run on zeros included), from the parsed graph: the
        # session does not expose the classifier's label attributes.
        proto = check_onnx(data)
        # Checked again on every load: the budgets may have changed since the upload.
        self.cost: OnnxCost = estimate_onnx_cost(proto, cost_limits or _cost_limits)
        self.max_rows = self.cost.max_rows
        described = describe_onnx(session, proto)
        del proto
        graph_input = session.get_inputs()[0]
        outputs = session.get_outputs()
        self._session = session
        self.run_timeout_seconds = run_timeout_seconds
        self.task_type = described["task_type"]
        self.n_features = described["n_features"]
        self.feature_names = None
        self.classes = described["classes"]
        self.has_proba = bool(described["has_proba"])
        self.input_dtype = np.dtype(TENSOR_DTYPES[graph_input.type])
        self.input_name = str(graph_input.name)
        if self.task_type == CLASSIFICATION:
            # skl2onnx and onnxmltools name them "label" and "probabilities"; go by type.
            label = next(o for o in outputs if _is_tensor(o.type) and "float" not in o.type)
            scores = [o for o in outputs if o.type in {"tensor(float)", "tensor(double)"}]
            if not scores:
                raise ModelRejected("model refused: ONNX classifier without a probability tensor")
            self._output_names = [str(label.name), str(scores[0].name)]
        else:
            self._output_names = [str(outputs[0].name)]
        if self.n_features is None:
            # A network: its named tensors, each input bounded as its cost estimate assumed.
            self.tensor_inputs = _tensor_specs(
                session.get_inputs(), self.cost.assumed_input, what="input"
            )
            self.tensor_outputs = _tensor_specs(outputs, {}, what="output")
            if not self.tensor_outputs:
                raise ModelRejected("model refused: the ONNX network has no tensor output")
            self.has_batch_axis = self.cost.max_rows is not None and all(
                spec.symbols[:1] == (ROWS,) for spec in (*self.tensor_inputs, *self.tensor_outputs)
            )
        # What the cache holds for it: the weights (`nbytes`), and the arena its calls use.
        self.nbytes = nbytes + arena_bytes(self.cost)

    def predict(self, x: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
        """Run the session once, asking only for the outputs served, within the budgets.

        Raises:
            InferenceLimitExceeded: the run passed its time budget or the memory cap.
            ValueError: ONNX Runtime refused to run the model on these inputs.
        """
        self._check_rows(len(x))
        results = self._run_session(self._output_names, {self.input_name: x})
        predictions = as_output(results[0])
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            # Regressors export [n, 1]; single-target predictions are [n] across frameworks.
            predictions = predictions[:, 0]
        probabilities = np.asarray(results[1]) if len(results) > 1 else None
        return predictions, probabilities

    def run(self, feeds: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Run a network once on its named inputs, within the budgets; every output by name.

        Raises:
            NotImplementedError: a tabular model.
            InferenceLimitExceeded: more rows than the cost estimate admits, or the run passed
                its time budget or the memory cap.
            ValueError: ONNX Runtime refused to run the model on these inputs.
        """
        if self.tensor_inputs is None:
            raise NotImplementedError("a tabular ONNX model takes a table, not named tensors")
        # The rows the cost estimate bounded: every input's dynamic first dimension (equal).
        rows = next((s.name for s in self.tensor_inputs if s.symbols[:1] == (ROWS,)), None)
        if rows is not None:
            self._check_rows(len(feeds[rows]))
        names = [spec.name for spec in self.tensor_outputs]
        results = self._run_session(names, feeds)
        return {name: as_output(value) for name, value in zip(names, results, strict=True)}

    def _check_rows(self, rows: int) -> None:
        if self.max_rows is not None and rows > self.max_rows:
            # Before any work: past it, the call costs more than the budgets the graph was
            # admitted under (its cost estimate, modelyard.serving.onnx_cost).
            raise InferenceLimitExceeded(
                f"this model answers at most {self.max_rows} rows per call within this "
                f"server's cost budgets; got {rows}, send fewer rows"
            )

    def _run_session(self, names: list[str], feeds: Mapping[str, Any]) -> list[Any]:
        import onnxruntime as ort

        options = ort.RunOptions()
        # A terminated or refused run is reported by the exception below, not ONNX Runtime's log.
        options.log_severity_level = 4
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        watch = _WATCHDOG.watch(options, self.run_timeout_seconds)
        try:
            results: list[Any] = self._session.run(names, dict(feeds), options)
        except Exception as exc:  # ONNX Runtime's errors share no base class but Exception
            if watch.is_fired:
                raise InferenceLimitExceeded(
                    f"the model took longer than {self.run_timeout_seconds:g} s on these inputs"
                ) from exc
            if any(marker in str(exc) for marker in _ALLOCATION_FAILURES):
                raise InferenceLimitExceeded(
                    "the model needs more memory for these inputs than this server allows its "
                    "ONNX inferences; send fewer rows"
                ) from exc
            # Not the message: it carries ONNX Runtime's source paths.
            raise ValueError("ONNX Runtime could not run the model on these inputs") from exc
        finally:
            _WATCHDOG.release(watch)
        return results


def arena_bytes(cost: OnnxCost) -> int:
    """Estimate the arena memory a busy model holds: the intermediate tensors of one call of a
    batch's rows (the cost estimate's peak memory less the weights, scaled from its `max_rows`
    to the batches' rows: cost is affine in rows), at most the process's cap."""
    activations = max(cost.peak_memory_bytes - cost.weights_bytes, 0)
    if cost.max_rows and _arena_rows is not None and _arena_rows < cost.max_rows:
        activations = -(-activations * _arena_rows // cost.max_rows)
    cap = _configured_cap_bytes
    return activations if cap is None else min(activations, cap)


def _tensor_specs(
    metas: list[Any], bounds: Mapping[str, list[int]], *, what: str
) -> tuple[TensorSpec, ...]:
    """Describe a session's inputs or outputs; outputs of other types than tensors are left out."""
    specs = []
    for meta in metas:
        dtype = OUTPUT_DTYPES.get(meta.type) if what == "output" else TENSOR_DTYPES.get(meta.type)
        if dtype is None:
            if what == "output":
                continue  # sequences and maps: never a network's answer
            raise ModelRejected(f"model refused: ONNX input of type {meta.type} is not served")
        dims = list(meta.shape) if meta.shape is not None else [None]
        shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims)
        symbols = tuple(
            None
            if shape[axis] != -1
            else (ROWS if axis == 0 else d if isinstance(d, str) else None)
            for axis, d in enumerate(dims)
        )
        bound = bounds.get(str(meta.name))
        specs.append(
            TensorSpec(
                name=str(meta.name),
                dtype=np.dtype(dtype),
                shape=shape,
                symbols=symbols,
                bounds=tuple(bound) if bound is not None and len(bound) == len(shape) else None,
            )
        )
    return tuple(specs)
