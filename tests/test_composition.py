"""The composition root: every process gets its components from `modelyard.composition`, the
same ones wired the same way; what differs between roles is what runs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import BaseRoute

from modelyard import deps
from modelyard.composition import open_components
from modelyard.jobs.queue import RedisJobs
from modelyard.serving.probe import NoProber
from modelyard.state import AppState
from tests.support.settings import make_settings


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Yield the API routes among `routes`, and among those of the routers included there."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # An included router stays one route of FastAPI's that holds the router's own.
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from api_routes(included.routes)


def components_taken(dependant: Dependant) -> Iterator[str]:
    """Yield the names of the components a route's dependencies take (`deps.component`)."""
    for sub in dependant.dependencies:
        call = sub.call
        if getattr(call, "__module__", None) == deps.__name__:
            yield str(getattr(call, "__name__", "")).removeprefix("get_")
        yield from components_taken(sub)


def test_every_component_a_route_takes_is_one_the_app_holds(app: FastAPI) -> None:
    state: AppState = app.state.modelyard
    taken = {name for route in api_routes(app.routes) for name in components_taken(route.dependant)}

    assert {"events", "settings", "store", "tokens", "readiness"} <= taken
    assert sorted(name for name in taken if not hasattr(state, name)) == []


async def test_a_worker_predicts_under_the_limits_a_server_does(
    tmp_path: Path, database_url: str, redis_url: str, engine: AsyncEngine
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        redis_url=redis_url,
        max_batch_rows=5,
        max_predict_elements=40,
        predict_rate_limit_per_minute=7,
        shadow_max_in_flight=2,
    )
    async with (
        open_components(settings, role="serving") as server,
        open_components(settings, role="worker") as worker,
    ):
        for predictor in (server.predictor, worker.predictor):
            assert (predictor.limits.max_rows, predictor.limits.max_elements) == (5, 40)
            assert predictor.rate_limiter is not None
            assert predictor.rate_limit_per_minute == 7
            assert predictor.max_shadows_in_flight == 2
        # The worker runs jobs from the queue, with that predictor; it probes no upload and
        # sends no webhook (server processes do).
        assert isinstance(worker.batch_jobs, RedisJobs)
        assert worker.job_runner is not None
        assert worker.job_runner.predictor is worker.predictor
        assert isinstance(worker.prober, NoProber)
        assert worker.webhooks is None
        # A serving replica has no batch jobs at all.
        assert (server.batch_jobs, server.job_runner) == (None, None)
