"""Dashboard pages comparing runs or model versions side by side (the API's `/api/v1/compare`)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from starlette.responses import Response

from modelyard.compare import service as compare_service
from modelyard.compare.schemas import MAX_ITEMS, Comparison
from modelyard.db.deps import SessionDep
from modelyard.web import charts
from modelyard.web.http import UserPage, WebRoute, render

router = APIRouter(route_class=WebRoute, include_in_schema=False)

Ids = Annotated[list[uuid.UUID], Query(alias="id", max_length=MAX_ITEMS + 1)]
SERVING_ROWS = (
    ("requests", "requests"),
    ("failures", "failures"),
    ("p50_inference_time_ms", "p50 latency (ms)"),
    ("p95_inference_time_ms", "p95 latency (ms)"),
    ("drift", "drift (24 h)"),
)


@router.get("/compare/runs")
async def compare_runs(page: UserPage, db: SessionDep, ids: Ids = []) -> Response:  # noqa: B006 - FastAPI copies query defaults
    found = await compare_service.compare_runs(db, page.signed_in, ids)
    return _render(page, found)


@router.get("/compare/versions")
async def compare_versions(
    page: UserPage,
    db: SessionDep,
    ids: Ids = [],  # noqa: B006 - FastAPI copies query defaults
    days: Annotated[int, Query(ge=1, le=90)] = 7,
) -> Response:
    settings = page.state.settings
    found = await compare_service.compare_versions(
        db,
        page.signed_in,
        ids,
        days=days,
        drift=compare_service.DriftLimits(
            reference_rows=settings.drift_reference_rows,
            max_rows=settings.drift_window_max_rows,
            max_payload_bytes=settings.prediction_log_max_payload_bytes,
        ),
        events=page.state.events,
    )
    return _render(page, found, days=days)


def _render(page: Any, found: Comparison, **context: Any) -> Response:
    labels = [item.label for item in found.items]
    history_charts = [
        # Every item keeps its series (empty or not), so its colour is the same in each chart.
        charts.lines(
            key,
            [
                (label, [(float(step), value) for step, value in points])
                for label, points in zip(labels, per_item, strict=True)
            ],
            x_label="step ",
        )
        for key, per_item in found.histories.items()
    ]
    serving = []
    for name, title in SERVING_ROWS:
        values = [getattr(figures, name) for figures in found.serving or ()]
        if name == "drift":
            values = [v.replace("_", " ") for v in values]
        if values:
            serving.append((title, values, len({orjson.dumps(v) for v in values}) > 1))
    return render(
        page,
        "compare.html",
        c=found,
        history_charts=history_charts,
        serving=serving,
        cell=_cell,
        **context,
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str | int):
        return str(value)
    return orjson.dumps(value).decode()
