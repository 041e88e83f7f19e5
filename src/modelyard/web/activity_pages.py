"""Dashboard pages of what happened: the prediction log and experiments."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from sqlalchemy import select
from starlette.responses import Response

from modelyard.audit import live
from modelyard.audit import service as audit_service
from modelyard.auth.service import Caller
from modelyard.db.deps import SessionDep
from modelyard.db.tables import RegisteredModel
from modelyard.errors import Unprocessable
from modelyard.experiments import service as experiments_service
from modelyard.predictions.log import queries as log_queries
from modelyard.predictions.log.record import PredictionStatus
from modelyard.registry import queries as registry_queries
from modelyard.schemas import PageParams
from modelyard.web import charts
from modelyard.web.http import UserPage, WebRoute, render

router = APIRouter(route_class=WebRoute, include_in_schema=False)


@router.get("/events")
async def live_events(page: UserPage, db: SessionDep) -> Response:
    """The signed-in user's events as Server-Sent Events, for the pages' live notices (the API's
    `GET /api/v1/events` for a browser session); from now on, or after `Last-Event-ID`."""
    user = page.signed_in
    session = page.session
    last = page.request.headers.get("last-event-id", "")
    start = int(last) if last.isdigit() and len(last) <= 18 else await audit_service.head(db)
    await db.close()
    return await live.open_stream(
        page.state,
        Caller(user, None),
        # The stream ends with the browser session (sign-out, expiry, a change of rights).
        live.Credential.of_account(user)
        if session is None
        else live.Credential.of_web_session(user, session),
        audit_service.AuditFilter(),
        start,
        valid_until=None if session is None else session.expires_at,
    )


PAGE_SIZE = 25
# The log's traffic filter: a traffic policy's shadow copies, or what callers were answered.
TRAFFIC = {"live": False, "shadow": True}
MODEL_CHOICES = 200  # models offered in the log's filter
Offset = Annotated[int, Query(ge=0, le=2**31)]


def _as_json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _day(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None


@router.get("/predictions")
async def predictions(
    page: UserPage,
    db: SessionDep,
    model_id: str = "",
    status: str = "",
    since: str = "",
    until: str = "",
    traffic: str = "",
    offset: Offset = 0,
) -> Response:
    user = page.signed_in
    try:
        chosen_model = uuid.UUID(model_id) if model_id else None
    except ValueError:
        chosen_model = None
    chosen_status = PredictionStatus(status) if status in tuple(PredictionStatus) else None
    chosen_traffic = traffic if traffic in TRAFFIC else ""
    listed = await log_queries.list_predictions(
        db,
        user,
        page=PageParams(limit=PAGE_SIZE, offset=offset),
        model_id=chosen_model,
        status=chosen_status,
        since=_day(since),
        until=_day(until),
        shadow=TRAFFIC.get(chosen_traffic),
    )
    models = (
        await db.execute(
            select(RegisteredModel.id, RegisteredModel.name)
            .where(registry_queries.owned_by(user))
            .order_by(RegisteredModel.name)
            .limit(MODEL_CHOICES)
        )
    ).all()
    return render(
        page,
        "predictions.html",
        listed=listed,
        offset=offset,
        limit=PAGE_SIZE,
        models=models,
        model_id=str(chosen_model or ""),
        status=status if chosen_status else "",
        since=since if _day(since) else "",
        until=until if _day(until) else "",
        traffic=chosen_traffic,
        query={
            "model_id": str(chosen_model or ""),
            "status": status if chosen_status else "",
            "since": since if _day(since) else "",
            "until": until if _day(until) else "",
            "traffic": chosen_traffic,
        },
    )


@router.get("/predictions/{prediction_id}")
async def prediction(prediction_id: uuid.UUID, page: UserPage, db: SessionDep) -> Response:
    found = await log_queries.get_prediction(db, page.signed_in, prediction_id)
    return render(page, "prediction.html", p=found, json=_as_json)


PARAM_COLUMNS = 6  # parameter and metric columns shown, from the keys on the page
METRIC_COLUMNS = 8


@router.get("/experiments")
async def experiments(
    page: UserPage,
    db: SessionDep,
    q: Annotated[str, Query(max_length=200)] = "",
    sort: Annotated[str, Query(max_length=260)] = "",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    filter: Annotated[str, Query(max_length=300)] = "",
    offset: Offset = 0,
) -> Response:
    """The runs with their parameters and latest metrics as columns; a column heading sorts by
    it, `filter` keeps the runs passing a threshold; ticked runs go to the compare page."""
    error = None
    try:
        sort_key = experiments_service.parse_sort(sort or None)
        filters = [experiments_service.MetricFilter.parse(filter)] if filter else []
    except Unprocessable as exc:
        error, sort_key, filters = exc.detail, experiments_service.parse_sort(None), []
    rows, total = await experiments_service.list_experiments(
        db,
        page.signed_in,
        page=PageParams(limit=PAGE_SIZE, offset=offset),
        search=q or None,
        sort=sort_key,
        order="asc" if order == "asc" else "desc",
        filters=filters,
    )
    latest = await experiments_service.latest_values(db, [row.id for row in rows])
    params = list(dict.fromkeys(k for row in rows for k in sorted(row.parameters)))
    metrics = list(dict.fromkeys(k for i in latest for k in latest[i]))
    return render(
        page,
        "experiments.html",
        experiments=rows,
        latest=latest,
        param_keys=params[:PARAM_COLUMNS],
        metric_keys=sorted(metrics)[:METRIC_COLUMNS],
        total=total,
        offset=offset,
        limit=PAGE_SIZE,
        q=q,
        sort=sort,
        order=order,
        filter=filter,
        error=error,
        query={"q": q, "sort": sort, "order": order, "filter": filter},
        json=_as_json,
    )


@router.get("/experiments/{experiment_id}")
async def experiment(experiment_id: uuid.UUID, page: UserPage, db: SessionDep) -> Response:
    found = await experiments_service.get_experiment(db, page.signed_in, experiment_id)
    series = await experiments_service.metric_series(db, found)
    metric_charts = [
        charts.lines(
            key, [(key, [(float(step), value) for step, value in points])], x_label="step "
        )
        for key, points in series.items()
    ]
    latest = await experiments_service.latest_metrics(db, found)
    versions = await experiments_service.produced_versions(db, found)
    return render(
        page,
        "experiment.html",
        experiment=found,
        metric_charts=metric_charts,
        latest=latest,
        versions=versions,
        json=_as_json,
    )
