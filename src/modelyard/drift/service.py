"""Use cases of drift signals: a version's reference (from a file, or from its first served
rows), and the drift of a window of the prediction log from it.

A drift report reads at most `max_rows` logged rows (the window's newest) through the indexed,
time-bounded, paged scan of `sources.sample_log`, so its cost does not grow with the log.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.artifacts.store import ArtifactStore
from modelyard.auth.scopes import Scope
from modelyard.auth.service import Caller
from modelyard.changes.events import Events
from modelyard.db.sql import rowcount
from modelyard.db.tables import FeatureReference, ModelAlias, ModelVersion, RegisteredModel
from modelyard.db.types import utcnow
from modelyard.drift import reference, stats
from modelyard.drift.schemas import (
    DriftRead,
    DriftWindow,
    FeatureDriftRead,
    FeatureSummary,
    ReferenceInfo,
    ReferenceRead,
    SampleInfo,
    Thresholds,
)
from modelyard.drift.sources import (
    Feature,
    Summaries,
    sample_log,
)
from modelyard.errors import Conflict, NotFound, Unprocessable
from modelyard.files.tabular import TabularLimits
from modelyard.registry import service as registry_service
from modelyard.registry.schemas import Stage

DEFAULT_WINDOW = timedelta(hours=24)
MAX_VERSION = 2**31 - 1


class ReferenceNotFound(NotFound):
    type = "reference-not-found"

    def __init__(self, model: RegisteredModel, number: int) -> None:
        super().__init__(f"version {number} of model {model.name!r} has no drift reference")


class NoReference(Conflict):
    """Drift asked for before there is anything to compare with."""

    type = "no-drift-reference"


class NoFeatureNames(Unprocessable):
    type = "no-feature-names"

    def __init__(self, model: RegisteredModel, number: int) -> None:
        super().__init__(
            f"version {number} of model {model.name!r} has no input schema naming its features; "
            "set one (PATCH the version's input_schema) first"
        )


def version_features(model: RegisteredModel, version: ModelVersion) -> list[Feature]:
    """Return the features of a version's input schema, in order.

    Raises:
        NoFeatureNames: the version has no input schema.
    """
    features = reference.schema_features(version.input_schema)
    if not features:
        raise NoFeatureNames(model, version.version)
    return features


async def resolve_version(
    db: AsyncSession, model: RegisteredModel, ref: str | None
) -> ModelVersion:
    """Return the version `ref` names: a number, an alias, or (None) the production version,
    else the newest version that is not archived.

    Raises:
        VersionNotFound, AliasNotFound: `ref` names nothing.
        NotFound: the model has no version to default to.
    """
    if ref is not None and ref.isascii() and ref.isdecimal():
        number = int(ref)
        if number > MAX_VERSION:  # past the column's range: PostgreSQL would refuse the query
            raise registry_service.VersionNotFound(model.name, number)
        return await registry_service.get_version(db, model, number)
    if ref is not None:
        row = await db.scalar(
            select(ModelVersion)
            .join(ModelAlias, ModelAlias.version_id == ModelVersion.id)
            .where(ModelAlias.model_id == model.id, ModelAlias.alias == ref)
        )
        if row is None:
            raise registry_service.AliasNotFound(model.name, ref)
        return row
    row = await db.scalar(
        select(ModelVersion)
        .where(ModelVersion.model_id == model.id, ModelVersion.stage != Stage.ARCHIVED)
        .order_by((ModelVersion.stage == Stage.PRODUCTION).desc(), ModelVersion.version.desc())
        .limit(1)
    )
    if row is None:
        raise NotFound(f"model {model.name!r} has no version that is not archived")
    return row


# --- references ---------------------------------------------------------------------------------


async def get_reference(db: AsyncSession, model: RegisteredModel, number: int) -> ReferenceRead:
    """Return the drift reference of version `number`.

    Raises:
        VersionNotFound: no such version.
        ReferenceNotFound: the version has none (yet).
    """
    version = await registry_service.get_version(db, model, number)
    row = await db.get(FeatureReference, version.id)
    if row is None:
        raise ReferenceNotFound(model, number)
    return _reference_read(row, version.version)


async def set_reference_from_file(
    db: AsyncSession,
    caller: Caller,
    model: RegisteredModel,
    number: int,
    *,
    path: str,
    store: ArtifactStore,
    tmp_dir: Path,
    limits: TabularLimits,
    events: Events,
) -> ReferenceRead:
    """Compute version `number`'s reference from a CSV or Parquet file of the caller's, replacing
    any other.

    The file is streamed (bounded memory, see `sources.summarise_file`; Parquet through a
    temporary file in `tmp_dir`); the database connection is given back while it is read.

    Raises:
        MissingScope, OutsideModelLimit: the caller's API key may not read files (a key limited
            to models never may).
        VersionNotFound: no such version.
        NoFeatureNames: the version's features are not named.
        InvalidPath: a path that could never be in the caller's area (400).
        FileNotFound: the caller has no file at `path`.
        InvalidReferenceFile: the file is not CSV or Parquet with numeric columns named like the
            features, or holds fewer than `reference.MIN_REFERENCE_ROWS` rows.
        Conflict: another reference of the version landed meanwhile.
    """
    # A file of the caller's is read: the files routes' right, checked before the file is
    # looked at (its statistics and cells are the file's content).
    caller.require(Scope.READ, model=None)
    user_id = caller.user.id
    version = await registry_service.get_version(db, model, number)
    features = version_features(model, version)
    version_id, model_id, owner_id, model_name = version.id, model.id, model.owner_id, model.name
    # The file may take a while: the connection goes back to the pool meanwhile.
    await db.close()
    read = await reference.read_file(
        store, owner_id=user_id, path=path, features=features, tmp_dir=tmp_dir, limits=limits
    )
    await db.execute(delete(FeatureReference).where(FeatureReference.version_id == version_id))
    row = read.row(version_id=version_id, model_id=model_id, created_by=user_id)
    db.add(row)
    try:
        await db.commit()
    except IntegrityError as exc:
        await db.rollback()
        raise Conflict("the version's reference changed meanwhile; try again") from exc
    await events.record(
        reference.changed(
            model_id,
            owner_id,
            version_id,
            number,
            model_name=model_name,
            source="file",
            rows=read.rows,
            path=path,
        )
    )
    return _reference_read(row, number)


async def delete_reference(
    db: AsyncSession, model: RegisteredModel, number: int, *, events: Events
) -> None:
    """Remove version `number`'s reference (the next drift request computes one from served rows).

    Raises:
        VersionNotFound: no such version.
        ReferenceNotFound: the version has none.
    """
    version = await registry_service.get_version(db, model, number)
    v = _Version.of(model, version)
    result = await db.execute(
        delete(FeatureReference).where(FeatureReference.version_id == v.version_id)
    )
    if not rowcount(result):
        raise ReferenceNotFound(model, number)
    await db.commit()
    await events.record(
        reference.changed(
            v.model_id, v.owner_id, v.version_id, number, model_name=v.model_name, source=None
        )
    )


@dataclass(frozen=True, slots=True)
class _Version:
    """What drift needs of a version, read once: a rollback expires the ORM rows."""

    model_id: uuid.UUID
    owner_id: uuid.UUID
    model_name: str
    version_id: uuid.UUID
    number: int
    created_at: datetime

    @classmethod
    def of(cls, model: RegisteredModel, version: ModelVersion) -> _Version:
        return cls(
            model_id=model.id,
            owner_id=model.owner_id,
            model_name=model.name,
            version_id=version.id,
            number=version.version,
            created_at=version.created_at,
        )


async def _served_reference(
    db: AsyncSession,
    v: _Version,
    features: list[Feature],
    *,
    rows: int,
    max_payload_bytes: int,
    events: Events,
) -> FeatureReference:
    """Compute and keep the version's reference from its first `rows` served rows.

    Raises:
        NoReference: fewer than `rows` usable rows logged so far.
    """
    sample = await sample_log(
        db,
        model_id=v.model_id,
        version_id=v.version_id,
        features=features,
        since=v.created_at,
        until=utcnow() + timedelta(seconds=1),
        max_rows=rows,
        newest_first=False,
        max_payload_bytes=max_payload_bytes,
    )
    if sample.rows < rows:
        raise NoReference(
            f"version {v.number} of model {v.model_name!r} has no drift reference, and "
            f"{sample.rows} of the {rows} served rows one would be computed from were logged; "
            "give a reference file (PUT .../reference) or serve more"
        )
    rng = stats.new_rng()
    accumulators = {f.name: stats.FeatureAccumulator(rng) for f in features if f.is_numeric}
    for name, values in sample.arrays().items():
        if name in accumulators:
            accumulators[name].add(values)
    row = FeatureReference(
        version_id=v.version_id,
        model_id=v.model_id,
        source="served",
        source_path=None,
        row_count=sample.rows,
        features=reference.feature_summaries(features, Summaries(accumulators, sample.rows)),
    )
    db.add(row)
    try:
        await db.commit()
    except IntegrityError:
        # Another request stored one first (from the same rows, or a file): use that.
        await db.rollback()
        stored = await db.get(FeatureReference, v.version_id)
        if stored is None:
            raise
        return stored
    await events.record(
        reference.changed(
            v.model_id,
            v.owner_id,
            v.version_id,
            v.number,
            model_name=v.model_name,
            source="served",
            rows=sample.rows,
        )
    )
    return row


def _reference_read(row: FeatureReference, number: int) -> ReferenceRead:
    features = []
    for data in row.features:
        name = data["name"]
        if data.get("kind") == "numeric":
            features.append(
                FeatureSummary(
                    name=name,
                    kind="numeric",
                    count=data["count"],
                    missing=data["missing"],
                    mean=data["mean"],
                    std=data["std"],
                    min=data["min"],
                    max=data["max"],
                    cuts=data["cuts"],
                    proportions=data["proportions"],
                    sample_size=len(data["sample"]),
                )
            )
        else:
            features.append(FeatureSummary(name=name, kind="skipped", reason=data.get("reason")))
    return ReferenceRead(
        model_id=row.model_id,
        version_id=row.version_id,
        version=number,
        source=row.source,
        source_path=row.source_path,
        row_count=row.row_count,
        created_at=row.created_at,
        features=features,
    )


# --- drift --------------------------------------------------------------------------------------


async def measure_drift(
    db: AsyncSession,
    model: RegisteredModel,
    *,
    version_ref: str | None,
    since: datetime | None,
    until: datetime | None,
    reference_rows: int,
    max_rows: int,
    max_payload_bytes: int,
    events: Events,
) -> DriftRead:
    """Compare the newest `max_rows` logged input rows of a version in a window with its
    reference, feature by feature.

    The window defaults to the 24 hours before `until` (default: now). Without a stored
    reference, one is computed from the version's first `reference_rows` served rows and kept.
    `max_payload_bytes` is the log's payload budget: it sizes the pages the log is read by.

    Raises:
        VersionNotFound, AliasNotFound: `version_ref` names nothing.
        Unprocessable: `since` is not before `until`.
        NoFeatureNames: the version's features are not named.
        NoReference: no reference and not enough served rows to compute one (409).
    """
    until = until or utcnow()
    since = since or until - DEFAULT_WINDOW
    if since >= until:
        raise Unprocessable("since must be before until")
    version = await resolve_version(db, model, version_ref)
    features = version_features(model, version)
    v = _Version.of(model, version)
    reference = await db.get(FeatureReference, v.version_id)
    if reference is None:
        reference = await _served_reference(
            db,
            v,
            features,
            rows=reference_rows,
            max_payload_bytes=max_payload_bytes,
            events=events,
        )
    sample = await sample_log(
        db,
        model_id=v.model_id,
        version_id=v.version_id,
        features=features,
        since=since,
        until=until,
        max_rows=max_rows,
        newest_first=True,
        max_payload_bytes=max_payload_bytes,
    )
    arrays = sample.arrays()
    summaries = {summary["name"]: summary for summary in reference.features}
    # The KS tests on thousands of values per feature are CPU work: off the event loop.
    results = await asyncio.to_thread(
        lambda: [_feature_drift(f, summaries.get(f.name), arrays[f.name]) for f in features]
    )
    return DriftRead(
        model_id=v.model_id,
        model_name=v.model_name,
        version=v.number,
        version_id=v.version_id,
        status="ok" if sample.rows >= stats.MIN_WINDOW_ROWS else "insufficient_data",
        drifted=any(r.drifted for r in results),
        window=DriftWindow(since=since, until=until),
        reference=ReferenceInfo(
            source=reference.source,
            source_path=reference.source_path,
            row_count=reference.row_count,
            created_at=reference.created_at,
        ),
        sample=SampleInfo(
            rows=sample.rows,
            max_rows=max_rows,
            predictions=sample.predictions,
            skipped_predictions=sample.skipped_predictions,
            skipped_rows=sample.skipped_rows,
            first_at=sample.first_at,
            last_at=sample.last_at,
        ),
        thresholds=Thresholds(
            psi_moderate=stats.PSI_MODERATE,
            psi_significant=stats.PSI_SIGNIFICANT,
            ks_p_value=stats.KS_P_VALUE,
            min_rows=stats.MIN_WINDOW_ROWS,
        ),
        features=results,
    )


def _feature_drift(
    feature: Feature, summary: dict[str, Any] | None, values: np.ndarray
) -> FeatureDriftRead:
    finite = values[np.isfinite(values)]
    base: dict[str, Any] = {
        "name": feature.name,
        "rows": int(finite.size),
        "missing": int(values.size - finite.size),
        "mean": float(finite.mean()) if finite.size else None,
    }
    if summary is None or summary.get("kind") != "numeric":
        reason = (
            "the reference does not have this feature" if summary is None else summary.get("reason")
        )
        return FeatureDriftRead(
            **base, drifted=False, skipped=reason, reference_mean=None, psi=None,
            psi_level=None, ks_statistic=None, ks_p_value=None, ks_flagged=False,
        )  # fmt: skip
    result = stats.compare(summary, values)
    return FeatureDriftRead(
        **base,
        drifted=result.drifted,
        skipped=result.reason,
        reference_mean=summary["mean"],
        psi=result.psi,
        psi_level=result.psi_level,
        ks_statistic=result.ks_statistic,
        ks_p_value=result.ks_p_value,
        ks_flagged=result.ks_flagged,
    )
