"""`/metrics` of `modelyard serve --workers 2`: one scrape, whichever worker answers it, shows
the sum over the workers, and a worker that dies leaves its counts but not its gauges. Every
wait is bounded; nothing asserts on time."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from modelyard.observability import metrics
from tests.observability.workers import Server, scrape, serve_workers, worker_pids

SCRAPE_TOKEN = "workers-scrape-token-0123456789"
# Not /health: the start-up polls count there.
COUNTED_ROUTE = "/health/ready"
# Requests per round, sent at once on new connections so that both workers accept some.
ROUND = 16
MAX_ROUNDS = 40
Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serve_workers(tmp_path, metrics_token=SCRAPE_TOKEN) as server:
        yield server


def counted_by_worker(server: Server) -> dict[int, float]:
    """Requests to COUNTED_ROUTE each worker counted, read from its own file."""
    counts: dict[int, float] = {}
    for path in server.metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.rpartition("_")[2])
        counts[pid] = sum(
            sample.value
            # prometheus-client's multiprocess module has no annotations.
            for family in MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
            for sample in family.samples
            if sample.name == "modelyard_http_requests_total"
            and sample.labels["route"] == COUNTED_ROUTE
        )
    return counts


def scraped_samples(server: Server) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(scrape(server, SCRAPE_TOKEN)):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def scraped_count(samples: Samples) -> float:
    return sum(
        value
        for labels, value in samples["modelyard_http_requests_total"]
        if labels["route"] == COUNTED_ROUTE
    )


def send_until_every_worker_answered(server: Server) -> int:
    """Send rounds of requests on new connections until both workers counted some; return how
    many were sent."""
    url = f"{server.url}{COUNTED_ROUTE}"

    def get(_: int) -> int:
        return httpx.get(url, timeout=10).status_code

    sent = 0
    with ThreadPoolExecutor(ROUND) as pool:
        for _ in range(MAX_ROUNDS):
            assert set(pool.map(get, range(ROUND))) == {200}
            sent += ROUND
            if all(count > 0 for count in counted_by_worker(server).values()):
                return sent
    pytest.fail(f"one worker answered all {sent} requests: {counted_by_worker(server)}")


def test_one_scrape_shows_the_sum_over_the_workers(server: Server) -> None:
    sent = send_until_every_worker_answered(server)

    by_worker = counted_by_worker(server)
    assert len(by_worker) == 2
    assert all(count > 0 for count in by_worker.values())
    for _ in range(6):  # new connections: either worker answers, each answer is the sum
        samples = scraped_samples(server)
        assert scraped_count(samples) == sent
        # Gauges are summed over the workers: one series, no per-process label.
        assert samples["modelyard_model_cache_models"] == [({}, 0.0)]
        assert len(samples["modelyard_prediction_log_queue_depth"]) == 1
        assert all("pid" not in labels for series in samples.values() for labels, _ in series)


def test_a_dead_workers_counts_stay_and_its_gauges_go(server: Server) -> None:
    sent = send_until_every_worker_answered(server)
    victim = min(worker_pids(server))

    os.kill(victim, signal.SIGKILL)
    # Uvicorn reaps it and starts another worker in its place.
    server.wait_for("the killed worker was reaped", lambda: not _is_running(victim))
    server.wait_for("a new worker started", lambda: len(worker_pids(server) - {victim}) == 2)

    samples = scraped_samples(server)
    assert scraped_count(samples) == sent
    assert list(server.metrics_dir.glob(f"gauge_live*_{victim}.db")) == []
    assert (server.metrics_dir / f"counter_{victim}.db").exists()


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_removes_the_workers_folder_when_it_stops(server: Server) -> None:
    returncode = server.stop()

    assert returncode == 0, server.log()
    assert not server.metrics_dir.exists()


def test_the_workers_folder_is_fresh_and_restored_after_use() -> None:
    before = os.environ.get(metrics.MULTIPROC_DIR_ENV)

    with metrics.multiprocess_dir() as path:
        assert os.environ[metrics.MULTIPROC_DIR_ENV] == str(path)
        assert list(path.iterdir()) == []
        # Workers forked from this process (prometheus-client imported already) write there.
        assert metrics.Metrics().multiprocess_dir == path

    assert not path.exists()
    assert os.environ.get(metrics.MULTIPROC_DIR_ENV) == before
    assert metrics.Metrics().multiprocess_dir is None


def test_without_serve_metrics_stay_in_the_process() -> None:
    assert metrics.Metrics().multiprocess_dir is None
