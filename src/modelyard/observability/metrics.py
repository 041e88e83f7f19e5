"""Every Prometheus metric of a Modelyard process, in one registry per app.

Labels come from bounded sets only: route templates (never raw paths), methods, status codes,
frameworks, outcome names, and model ids and version numbers of the registry (bounded by what
is registered, never by what clients send).
"""

from __future__ import annotations

import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# From 0.1 ms (a cached linear model) to 10 s (a slow upload or a huge batch).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The metrics of one app; components receive it and update their own series."""

    def __init__(self) -> None:
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
        self.cache_models = Gauge(
            "modelyard_model_cache_models", "Models held in the cache", registry=r
        )
        self.cache_bytes = Gauge(
            "modelyard_model_cache_bytes", "Estimated bytes held by cached models", registry=r
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

        # Children of labelled series by label values: the hot path looks each set up once
        # (`labels()` takes a lock and formats every value on each call).
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._predictions: dict[tuple[uuid.UUID, int, str, str], Any] = {}

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
        """Return the Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
