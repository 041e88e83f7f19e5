"""A version's drift reference from a file: the features its input schema names, the file's
summaries, and the row and audit action that record them. Used by the drift routes (a reference
set later) and by uploads (`reference_path`: the version and its reference commit together)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.artifacts.store import ArtifactStore
from modelyard.changes.events import Action
from modelyard.config import Settings
from modelyard.db.tables import FeatureReference
from modelyard.drift import stats
from modelyard.drift.sources import Feature, InvalidReferenceFile, Summaries, summarise_file
from modelyard.files import service as files_service
from modelyard.files.tabular import TabularLimits

# A reference needs this many rows: fewer make deciles and the KS test meaningless.
MIN_REFERENCE_ROWS = stats.MIN_WINDOW_ROWS


def limits_of(settings: Settings) -> TabularLimits:
    """Return what reading a reference file may cost, from the settings."""
    return TabularLimits.of(settings, max_rows=settings.drift_reference_max_rows)


def schema_features(input_schema: dict[str, Any] | None) -> list[Feature]:
    """Return the features an input schema names, in order (none without a schema)."""
    features = (input_schema or {}).get("features") or []
    return [Feature(name=str(f["name"]), type=str(f.get("type", "float"))) for f in features]


@dataclass(frozen=True, slots=True)
class FileReference:
    """A reference file read and summarised, not yet stored."""

    path: str
    rows: int
    features: list[dict[str, Any]]

    def row(
        self, *, version_id: uuid.UUID, model_id: uuid.UUID, created_by: uuid.UUID
    ) -> FeatureReference:
        return FeatureReference(
            version_id=version_id,
            model_id=model_id,
            source="file",
            source_path=self.path,
            row_count=self.rows,
            features=self.features,
            created_by=created_by,
        )


async def read_file(
    store: ArtifactStore,
    *,
    owner_id: uuid.UUID,
    path: str,
    features: list[Feature],
    tmp_dir: Path,
    limits: TabularLimits,
) -> FileReference:
    """Read and summarise the file at `path` in `owner_id`'s area as a reference of `features`.

    The file is streamed (bounded memory, see `sources.summarise_file`; Parquet through a
    temporary file in `tmp_dir`), within `limits` (see `limits_of`).

    Raises:
        InvalidPath: a path that could never be in the caller's area (400).
        FileNotFound: the caller has no file at `path`.
        InvalidReferenceFile: the file is not CSV or Parquet with numeric columns named like the
            features, holds fewer than `MIN_REFERENCE_ROWS` rows, or is past `limits`.
    """
    stream = await files_service.open_file(store, owner_id=owner_id, path=path)
    try:
        summaries = await summarise_file(stream, features, tmp_dir=tmp_dir, limits=limits)
    finally:
        await stream.aclose()
    if summaries.rows < MIN_REFERENCE_ROWS:
        raise InvalidReferenceFile(
            f"the reference file has {summaries.rows} data rows; at least {MIN_REFERENCE_ROWS} "
            "are needed"
        )
    return FileReference(path, summaries.rows, feature_summaries(features, summaries))


def feature_summaries(features: list[Feature], summaries: Summaries) -> list[dict[str, Any]]:
    """Return the stored summaries, in the schema's order (a list: JSONB does not keep the order
    of an object's keys)."""
    result: list[dict[str, Any]] = []
    ks_size = stats.ks_sample_size(len(summaries.accumulators))
    for feature in features:
        accumulator = summaries.accumulators.get(feature.name)
        if accumulator is None:
            summary = {"kind": "skipped", "reason": f"{feature.type} values are not compared"}
        elif accumulator.count < MIN_REFERENCE_ROWS:
            summary = {
                "kind": "skipped",
                "reason": f"{accumulator.count} numeric values in the reference; at least "
                f"{MIN_REFERENCE_ROWS} needed",
            }
        else:
            summary = accumulator.summary(ks_size)
        result.append({"name": feature.name, **summary})
    return result


def changed(
    model_id: uuid.UUID,
    owner_id: uuid.UUID,
    version_id: uuid.UUID,
    number: int,
    *,
    model_name: str,
    source: str | None,
    **details: object,
) -> Action:
    """Return the action of a reference stored (`source`) or removed (`source` None)."""
    return Action(
        name="reference.changed",
        target_type="model_version",
        target_id=str(version_id),
        owner_id=owner_id,
        model_id=model_id,
        details={"model": model_name, "version": number, "source": source, **details},
    )
