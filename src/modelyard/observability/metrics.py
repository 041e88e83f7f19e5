"""Every Prometheus metric of a Modelyard process, in one registry per app.

Labels come from bounded sets only: route templates (never raw paths), methods, status codes,
frameworks, outcome names, and model ids and version numbers of the registry (bounded by what
is registered, never by what clients send).

Across workers: `modelyard serve --workers N` (N > 1) points `PROMETHEUS_MULTIPROC_DIR` at a
fresh folder of its own before the workers start (`multiprocess_dir`). In the workers, which
inherit it, prometheus-client then keeps every value in a per-process mmap file there, and a
scrape answered by any worker merges all the files (`MultiProcessCollector`): counters and
histograms are summed over every worker the process ever had (a restarted worker's counts are
kept, so totals never go back), gauges are aggregated by their `multiprocess_mode`, over live
workers only. Without the variable (one worker, tests, `create_app` alone) values live in memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

CONTENT_TYPE = CONTENT_TYPE_LATEST
# prometheus-client's own switch: read once, when it is first imported.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The files of gauges whose mode counts live processes only: `gauge_live<mode>_<pid>.db`.
_LIVE_GAUGE_FILES = "gauge_live*_*.db"

# From 0.1 ms (a cached linear model) to 10 s (a slow upload or a huge batch).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The metrics of one app; components receive it and update their own series."""

    def __init__(self) -> None:
        # Where the workers' values are merged from, or None: values in this process only.
        self.multiprocess_dir = _multiprocess_dir()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "modelyard_http_requests_total",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "modelyard_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "modelyard_predictions_total",
            "Prediction requests by model version, protocol and outcome",
            ["model_id", "version", "protocol", "status"],
            registry=r,
        )
        self.inference_time = Histogram(
            "modelyard_inference_duration_seconds",
            "Time spent in a model's predict call",
            ["framework"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "modelyard_batch_rows",
            "Rows per predict call after adaptive batching",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "modelyard_batch_requests",
            "Requests merged into one predict call",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "modelyard_model_cache_hits_total", "Model cache hits", registry=r
        )
        self.cache_misses = Counter(
            "modelyard_model_cache_misses_total", "Model cache misses (loads)", registry=r
        )
        self.cache_evictions = Counter(
            "modelyard_model_cache_evictions_total", "Models evicted from the cache", registry=r
        )
        # Gauges across workers (multiprocess mode): each worker holds its own cache and log
        # queue, so the process's figure is the sum over its live workers ("livesum": a worker
        # that exited no longer holds anything, its figure is dropped).
        self.cache_models = Gauge(
            "modelyard_model_cache_models",
            "Models held in the cache",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_bytes = Gauge(
            "modelyard_model_cache_bytes",
            "Estimated bytes held by cached models",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_load_time = Histogram(
            "modelyard_model_load_duration_seconds",
            "Time to fetch, verify and load a model version",
            ["framework"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.log_queue_depth = Gauge(
            "modelyard_prediction_log_queue_depth",
            "Predictions waiting to be written to the log",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.log_rows_written = Counter(
            "modelyard_prediction_log_rows_written_total",
            "Prediction log rows written to the database",
            registry=r,
        )
        self.log_rows_spooled = Counter(
            "modelyard_prediction_log_rows_spooled_total",
            "Prediction log rows spooled to disk while the database was unavailable",
            registry=r,
        )
        self.log_rows_replayed = Counter(
            "modelyard_prediction_log_rows_replayed_total",
            "Spooled prediction log rows written back to the database",
            registry=r,
        )
        self.log_rows_dropped = Counter(
            "modelyard_prediction_log_rows_dropped_total",
            "Prediction log rows lost (neither written nor spooled)",
            registry=r,
        )
        self.shadow_dropped = Counter(
            "modelyard_shadow_predictions_dropped_total",
            "Sampled shadow copies of requests not predicted: too many were in flight",
            registry=r,
        )

        # Children of labelled series by label values: the hot path looks each set up once
        # (`labels()` takes a lock and formats every value on each call).
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._predictions: dict[tuple[uuid.UUID, int, str, str], Any] = {}
        # The scrape's view across workers: the files, not this process's metric objects.
        self._exposed = self.registry
        if self.multiprocess_dir is not None:
            self._exposed = CollectorRegistry()
            # prometheus-client's multiprocess module has no annotations.
            MultiProcessCollector(self._exposed, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one answered HTTP request."""
        children = self._http.get((route, method, status))
        if children is None:
            children = (
                self.http_requests.labels(route, method, str(status)),
                self.http_latency.labels(route, method),
            )
            self._http[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def prediction(self, model_id: uuid.UUID, version: int, protocol: str, status: str) -> None:
        """Count one prediction request of a model version by protocol and outcome."""
        key = (model_id, version, protocol, status)
        child = self._predictions.get(key)
        if child is None:
            child = self.predictions.labels(str(model_id), str(version), protocol, status)
            self._predictions[key] = child
        child.inc()

    def render(self) -> bytes:
        """Return the Prometheus text exposition of every metric (of every worker, if several).

        Blocking: it reads every worker's file in multiprocess mode.
        """
        if self.multiprocess_dir is not None:
            _forget_dead_workers(self.multiprocess_dir)
        return generate_latest(self._exposed)


def _multiprocess_dir() -> Path | None:
    """Return the folder of `PROMETHEUS_MULTIPROC_DIR`, or None when it is not set.

    Raises:
        RuntimeError: it was set after prometheus-client chose in-memory values (the workers'
            values would never reach the folder).
    """
    path = os.environ.get(MULTIPROC_DIR_ENV)
    if not path:
        return None
    if not getattr(prometheus_values.ValueClass, "_multiprocess", False):
        raise RuntimeError(f"{MULTIPROC_DIR_ENV} was set after prometheus_client was imported")
    return Path(path)


def _forget_dead_workers(path: Path) -> None:
    """Drop the live-gauge files of workers that are gone (exited, crashed, killed).

    Their counters and histograms stay: what a worker counted before it died still happened.
    The folder belongs to one `serve` process, so its workers share this pid namespace.
    """
    for file in path.glob(_LIVE_GAUGE_FILES):
        pid = file.stem.rpartition("_")[2]
        if pid.isdigit() and not _is_running(int(pid)):
            mark_process_dead(int(pid), str(path))  # type: ignore[no-untyped-call]  # unannotated, as above


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[Path]:
    """Point `PROMETHEUS_MULTIPROC_DIR` at a new empty folder for the workers about to start.

    The folder is removed on exit. It is this process's own, in the temporary directory rather
    than the data folder: several `serve` processes may share one data folder (compose's api and
    serving do), and neither may wipe, sum or sweep the other's workers. Set before the workers
    are started. prometheus-client reads the variable when it is first imported, which this
    process has done already: it is made to read it again, so workers forked from this process
    (`cli.supervisor`) keep their values in the folder too.
    """
    path = Path(tempfile.mkdtemp(prefix="modelyard-metrics-"))
    previous = os.environ.get(MULTIPROC_DIR_ENV)
    previous_class = prometheus_values.ValueClass
    os.environ[MULTIPROC_DIR_ENV] = str(path)
    prometheus_values.ValueClass = prometheus_values.get_value_class()  # type: ignore[no-untyped-call]
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_DIR_ENV, None)
        else:
            os.environ[MULTIPROC_DIR_ENV] = previous
        prometheus_values.ValueClass = previous_class
        shutil.rmtree(path, ignore_errors=True)
