"""Use cases of comparing runs or model versions: one query per kind of fact, whatever the count.

Serving figures come from the prediction rollups (`predictions.log.queries.version_stats`, one
query per model) and the drift report (`drift.service.measure_drift`, whose read of the log is
bounded by `drift_window_max_rows`), never from a scan of the raw prediction log.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from modelyard.changes.events import Events
from modelyard.compare.schemas import (
    MAX_ITEMS,
    MIN_ITEMS,
    ComparedItem,
    ComparedValues,
    Comparison,
    DriftStatus,
    ServingFigures,
)
from modelyard.db.tables import Experiment, ModelVersion, RegisteredModel, User
from modelyard.db.types import utcnow
from modelyard.drift import service as drift_service
from modelyard.errors import NotFound, Unprocessable
from modelyard.experiments import service as experiments_service
from modelyard.predictions.log import queries as log_queries
from modelyard.predictions.log.schemas import VersionStats
from modelyard.registry import queries


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftLimits:
    """The settings a drift report reads with (see `drift.service.measure_drift`)."""

    reference_rows: int
    max_rows: int
    max_payload_bytes: int


def check_ids(ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Return the ids if there are 2 to 10 distinct ones.

    Raises:
        Unprocessable: fewer than 2, more than 10, or repeated ids.
    """
    if not MIN_ITEMS <= len(ids) <= MAX_ITEMS:
        raise Unprocessable(f"compare {MIN_ITEMS} to {MAX_ITEMS} items, not {len(ids)}")
    if len(set(ids)) != len(ids):
        raise Unprocessable("each id may be given once")
    return list(ids)


def side_by_side(rows: Sequence[Mapping[str, Any]]) -> list[ComparedValues]:
    """Return every key of `rows` (sorted) with each row's value, marking those that differ."""
    keys = sorted({key for row in rows for key in row})
    compared = []
    for key in keys:
        values = [row.get(key) for row in rows]
        distinct = {orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values}
        compared.append(ComparedValues(key=key, values=values, differs=len(distinct) > 1))
    return compared


def _missing(kind: str, ids: Iterable[uuid.UUID]) -> NotFound:
    return NotFound(f"{kind} {', '.join(repr(str(i)) for i in ids)} not found")


async def compare_runs(db: AsyncSession, user: User, ids: Sequence[uuid.UUID]) -> Comparison:
    """Compare the caller's runs: parameters, latest metrics and metric histories.

    Raises:
        Unprocessable: not 2 to 10 distinct ids.
        NotFound: an id is not one of the caller's runs.
    """
    ids = check_ids(ids)
    found = {
        run.id: run
        for run in await db.scalars(
            experiments_service.owned_experiments(user).where(Experiment.id.in_(ids))
        )
    }
    if missing := [i for i in ids if i not in found]:
        raise _missing("experiment", missing)
    runs = [found[i] for i in ids]
    latest = await experiments_service.latest_values(db, ids)
    series = [await experiments_service.metric_series(db, run) for run in runs]
    return Comparison(
        kind="runs",
        items=[
            ComparedItem(
                id=run.id,
                label=run.name,
                created_at=run.created_at,
                status=run.status,
                ended_at=run.ended_at,
            )
            for run in runs
        ],
        params=side_by_side([run.parameters for run in runs]),
        metrics=side_by_side([latest[i] for i in ids]),
        histories=_histories(series),
        serving=None,
        since=None,
    )


async def compare_versions(
    db: AsyncSession,
    user: User,
    ids: Sequence[uuid.UUID],
    *,
    days: int,
    drift: DriftLimits,
    events: Events,
) -> Comparison:
    """Compare model versions the caller may act on: hyperparameters, metrics, their runs'
    metric histories, and their serving figures over the last `days` days.

    Raises:
        Unprocessable: not 2 to 10 distinct ids.
        NotFound: an id is not a version of a model the caller may act on.
    """
    ids = check_ids(ids)
    models = queries.owned_models(user).subquery()
    rows = await db.execute(
        select(ModelVersion, RegisteredModel)
        .join(models, models.c.id == ModelVersion.model_id)
        .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(ModelVersion.id.in_(ids))
    )
    found: dict[uuid.UUID, tuple[ModelVersion, RegisteredModel]] = {}
    for version, model in rows:
        set_committed_value(version, "model", model)
        found[version.id] = (version, model)
    if missing := [i for i in ids if i not in found]:
        raise _missing("model version", missing)
    pairs = [found[i] for i in ids]
    # Histories of the runs the versions are linked to (only the caller's own runs).
    run_ids = {v.experiment_id for v, _ in pairs if v.experiment_id is not None}
    runs = {
        run.id: run
        for run in await db.scalars(
            experiments_service.owned_experiments(user).where(Experiment.id.in_(run_ids))
        )
    }
    run_series = {i: await experiments_service.metric_series(db, run) for i, run in runs.items()}
    series = [
        run_series.get(v.experiment_id, {}) if v.experiment_id is not None else {} for v, _ in pairs
    ]
    since = utcnow() - timedelta(days=days)
    serving = await _serving(db, user, pairs, since=since, drift=drift, events=events)
    return Comparison(
        kind="versions",
        items=[
            ComparedItem(
                id=v.id,
                label=f"{m.name} v{v.version}",
                created_at=v.created_at,
                model_id=m.id,
                model_name=m.name,
                version=v.version,
                stage=v.stage,
                experiment_id=v.experiment_id,
            )
            for v, m in pairs
        ],
        params=side_by_side([v.hyperparameters or {} for v, _ in pairs]),
        metrics=side_by_side([v.metrics or {} for v, _ in pairs]),
        histories=_histories(series),
        serving=serving,
        since=since,
    )


def _histories(
    series: Sequence[Mapping[str, list[tuple[int, float]]]],
) -> dict[str, list[list[tuple[int, float]]]]:
    keys = sorted({key for one in series for key in one})
    return {key: [one.get(key, []) for one in series] for key in keys}


async def _serving(
    db: AsyncSession,
    user: User,
    pairs: Sequence[tuple[ModelVersion, RegisteredModel]],
    *,
    since: datetime,
    drift: DriftLimits,
    events: Events,
) -> list[ServingFigures]:
    stats: dict[tuple[uuid.UUID, int | None], VersionStats] = {}
    for model_id in dict.fromkeys(m.id for _, m in pairs):  # one rollup query per model
        for row in await log_queries.version_stats(db, user, model_id=model_id, since=since):
            stats[(row.model_id, row.version)] = row
    figures = []
    for version, model in pairs:
        found = stats.get((model.id, version.version))
        figures.append(
            ServingFigures(
                requests=found.total_predictions if found else 0,
                failures=found.failed_predictions if found else 0,
                p50_inference_time_ms=found.p50_inference_time_ms if found else None,
                p95_inference_time_ms=found.p95_inference_time_ms if found else None,
                last_prediction_at=found.last_prediction_at if found else None,
                drift=await _drift_status(db, model, version, drift=drift, events=events),
            )
        )
    return figures


async def _drift_status(
    db: AsyncSession,
    model: RegisteredModel,
    version: ModelVersion,
    *,
    drift: DriftLimits,
    events: Events,
) -> DriftStatus:
    try:
        report = await drift_service.measure_drift(
            db,
            model,
            version_ref=str(version.version),
            since=None,
            until=None,
            reference_rows=drift.reference_rows,
            max_rows=drift.max_rows,
            max_payload_bytes=drift.max_payload_bytes,
            events=events,
        )
    except drift_service.NoFeatureNames:
        return "no_feature_names"
    except drift_service.NoReference:
        return "no_reference"
    if report.status == "insufficient_data":
        return "insufficient_data"
    return "drifted" if report.drifted else "ok"
