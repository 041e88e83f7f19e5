"""Routes of drift signals: `/api/v1/models/{model}/versions/{version}/reference` and
`/api/v1/models/{model}/drift`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, status
from pydantic import AwareDatetime

from modelyard.artifacts.deps import StoreDep
from modelyard.auth.deps import CallerDep
from modelyard.changes.deps import EventsDep
from modelyard.db.deps import SessionDep
from modelyard.deps import SettingsDep
from modelyard.drift import reference, service
from modelyard.drift.schemas import DriftRead, ReferenceFile, ReferenceRead
from modelyard.edge.routing import make_router
from modelyard.registry.deps import OwnedModel, VersionNumber

router = make_router(prefix="/api/v1/models", tags=["drift"])


@router.put("/{model}/versions/{version}/reference", response_model=ReferenceRead)
async def set_reference(
    model: OwnedModel,
    version: VersionNumber,
    body: ReferenceFile,
    caller: CallerDep,
    db: SessionDep,
    events: EventsDep,
    settings: SettingsDep,
    store: StoreDep,
) -> ReferenceRead:
    """Compute a version's drift reference from a CSV or Parquet file in the caller's file area.

    A CSV has a header row; the columns named like the version's numeric input features are read
    (others are ignored), streamed in bounded memory. It replaces any earlier reference. Needs
    `write`, and `read` (a file is read); a key limited to models may not name files.
    """
    return await service.set_reference_from_file(
        db,
        caller,
        model,
        version,
        path=body.path,
        store=store,
        tmp_dir=settings.data_dir / "tmp",
        limits=reference.limits_of(settings),
        events=events,
    )


@router.get("/{model}/versions/{version}/reference", response_model=ReferenceRead)
async def get_reference(model: OwnedModel, version: VersionNumber, db: SessionDep) -> ReferenceRead:
    """Show a version's drift reference: its source, row count and per-feature summary."""
    return await service.get_reference(db, model, version)


@router.delete("/{model}/versions/{version}/reference", status_code=status.HTTP_204_NO_CONTENT)
async def delete_reference(
    model: OwnedModel, version: VersionNumber, db: SessionDep, events: EventsDep
) -> None:
    """Remove a version's drift reference; the next drift request computes one from served rows."""
    await service.delete_reference(db, model, version, events=events)


@router.get(
    "/{model}/drift",
    response_model=DriftRead,
    responses={409: {"description": "no reference, and too few served rows to compute one"}},
)
async def get_drift(
    model: OwnedModel,
    db: SessionDep,
    events: EventsDep,
    settings: SettingsDep,
    version: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            description="a version number or an alias; default: the production version, else "
            "the newest one not archived",
        ),
    ] = None,
    since: Annotated[
        AwareDatetime | None,
        Query(description="from this time on, with a time zone; default: 24 hours before `until`"),
    ] = None,
    until: Annotated[
        AwareDatetime | None, Query(description="before this time, with a time zone; default: now")
    ] = None,
) -> DriftRead:
    """Compare a window of a version's logged inputs with its reference, feature by feature.

    Numeric features get the population stability index over the reference's deciles (< 0.1
    stable, 0.1-0.25 moderate, >= 0.25 significant) and the two-sample Kolmogorov-Smirnov test
    (flagged at p < 0.01); a feature has drifted when either says so, on at least 50 values.
    Only the window's newest `MODELYARD_DRIFT_WINDOW_MAX_ROWS` rows are read.
    """
    return await service.measure_drift(
        db,
        model,
        version_ref=version,
        since=since,
        until=until,
        reference_rows=settings.drift_reference_rows,
        max_rows=settings.drift_window_max_rows,
        max_payload_bytes=settings.prediction_log_max_payload_bytes,
        events=events,
    )
