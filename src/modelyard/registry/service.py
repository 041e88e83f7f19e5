"""Use cases of the registry: uploads, models, versions, lifecycle, aliases."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Select, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.elements import UnaryExpression

from modelyard.artifacts import ArtifactStore
from modelyard.artifacts.signing import LinkTarget, UrlSigner
from modelyard.artifacts.store import download_link
from modelyard.artifacts.uploads import ReceivedFile
from modelyard.changes.events import Action, Events
from modelyard.db import sql
from modelyard.db.tables import ModelAlias, ModelVersion, RegisteredModel, User
from modelyard.db.types import utcnow
from modelyard.drift import reference as drift_reference
from modelyard.errors import Conflict, NotFound, Unprocessable
from modelyard.experiments import service as experiments_service
from modelyard.files.tabular import TabularLimits
from modelyard.predictions.oip import to_datatype
from modelyard.registry import queries
from modelyard.registry.schemas import (
    EXPORTED_TO_ONNX,
    InputSchema,
    ModelFramework,
    ModelSort,
    ModelStatus,
    ModelUpdate,
    Stage,
    UploadForm,
    VersionUpdate,
)
from modelyard.schemas import DownloadUrl, PageParams
from modelyard.serving.formats import FRAMEWORK_OF, Framework, ModelFormat, detect_format
from modelyard.serving.probe import Prober, ProbeReport

log = logging.getLogger(__name__)
# The key of a version's metadata that holds the ONNX cost estimate made at upload
# (modelyard.serving.onnx_cost.OnnxCost.as_json); set by the server, kept through updates.
COST_KEY = "cost"

ARTIFACT_PREFIX = "models/"
FILE_EXTENSIONS = {
    "skops": ".skops",
    "joblib": ".joblib",
    "pickle": ".pkl",
    "onnx": ".onnx",
    "xgboost-json": ".json",
    "xgboost-ubj": ".ubj",
    "lightgbm-text": ".txt",
}


class ModelNotFound(NotFound):
    def __init__(self, ref: str) -> None:
        super().__init__(f"model {ref!r} not found")


class VersionNotFound(NotFound):
    def __init__(self, model: str, version: int) -> None:
        super().__init__(f"version {version} of model {model!r} not found")


class AliasNotFound(NotFound):
    def __init__(self, model: str, alias: str) -> None:
        super().__init__(f"alias {alias!r} of model {model!r} not found")


@dataclass
class ModelView:
    """A model with what its read form summarises from versions and aliases."""

    model: RegisteredModel
    latest_version: int | None = None
    production_version: int | None = None
    aliases: dict[str, int] = field(default_factory=dict)
    versions: list[ModelVersion] = field(default_factory=list)


# --- models -------------------------------------------------------------------------------------


async def get_model(db: AsyncSession, user: User, ref: str) -> RegisteredModel:
    """Return the model `ref` (UUID or name) that `user` may act on.

    Raises:
        ModelNotFound: no such model, or another user's (never revealed).
    """
    model = await queries.find_model(db, user, ref)
    if model is None:
        raise ModelNotFound(ref)
    return model


async def describe_models(
    db: AsyncSession, models: Sequence[RegisteredModel], *, with_versions: bool = False
) -> list[ModelView]:
    """Summarise versions and aliases of `models` in two queries, whatever their number."""
    views = {m.id: ModelView(m) for m in models}
    if not views:
        return []
    not_archived = ModelVersion.stage != Stage.ARCHIVED
    production = ModelVersion.stage == Stage.PRODUCTION
    rows = await db.execute(
        select(
            ModelVersion.model_id,
            func.max(ModelVersion.version).filter(not_archived),
            func.max(ModelVersion.version).filter(production),
        )
        .where(ModelVersion.model_id.in_(views))
        .group_by(ModelVersion.model_id)
    )
    for model_id, latest, prod in rows:
        views[model_id].latest_version = latest
        views[model_id].production_version = prod
    aliases = await db.execute(
        select(ModelAlias.model_id, ModelAlias.alias, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == ModelAlias.version_id)
        .where(ModelAlias.model_id.in_(views))
        .order_by(ModelAlias.alias)
    )
    for model_id, alias, number in aliases:
        views[model_id].aliases[alias] = number
    if with_versions:
        versions = await db.scalars(
            select(ModelVersion)
            .where(ModelVersion.model_id.in_(views))
            .order_by(ModelVersion.version.desc())
        )
        for row in versions:
            views[row.model_id].versions.append(row)
    return list(views.values())


async def describe_model(
    db: AsyncSession, model: RegisteredModel, *, with_versions: bool = False
) -> ModelView:
    """Summarise one model."""
    return (await describe_models(db, [model], with_versions=with_versions))[0]


_SORTS: dict[str, UnaryExpression[Any]] = {
    "name": RegisteredModel.name.asc(),
    "-name": RegisteredModel.name.desc(),
    "created_at": RegisteredModel.created_at.asc(),
    "-created_at": RegisteredModel.created_at.desc(),
    "updated_at": RegisteredModel.updated_at.asc(),
    "-updated_at": RegisteredModel.updated_at.desc(),
}


async def list_models(
    db: AsyncSession,
    user: User,
    *,
    page: PageParams,
    search: str | None = None,
    stage: Stage | None = None,
    framework: str | None = None,
    task_type: str | None = None,
    tag: str | None = None,
    include_archived: bool = False,
    sort: ModelSort = "-created_at",
) -> tuple[list[ModelView], int]:
    """Return one page of the caller's own models matching the filters, and their total."""
    query: Select[RegisteredModel] = select(RegisteredModel).where(queries.owned_by(user))
    if not include_archived:
        query = query.where(RegisteredModel.status == ModelStatus.ACTIVE)
    if search:
        query = query.where(
            sql.text_search([RegisteredModel.name, RegisteredModel.description], search)
        )
    if task_type:
        query = query.where(RegisteredModel.task_type == task_type)
    if tag:
        query = query.where(sql.json_array_contains(db, RegisteredModel.tags, tag))
    version_filters = []
    if stage:
        version_filters.append(ModelVersion.stage == stage)
    if framework:
        version_filters.append(ModelVersion.framework == framework)
    if version_filters:
        query = query.where(
            select(ModelVersion.id)
            .where(ModelVersion.model_id == RegisteredModel.id, *version_filters)
            .exists()
        )
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    # The id breaks ties so that pages never repeat or skip a row.
    rows = await db.scalars(
        query.order_by(_SORTS[sort], RegisteredModel.id).limit(page.limit).offset(page.offset)
    )
    return await describe_models(db, list(rows)), total or 0


async def update_model(db: AsyncSession, model: RegisteredModel, data: ModelUpdate) -> ModelView:
    """Change a model's description, task type or tags."""
    for name, value in data.model_dump(exclude_unset=True).items():
        setattr(model, name, value)
    model.updated_at = utcnow()
    await db.commit()
    return await describe_model(db, model)


async def archive_model(db: AsyncSession, model: RegisteredModel, *, events: Events) -> None:
    """Soft-delete a model: it and all its versions become archived (artifacts are kept)."""
    now = utcnow()
    await _lock_model(db, model)
    await db.execute(
        update(ModelVersion)
        .where(ModelVersion.model_id == model.id, ModelVersion.stage != Stage.ARCHIVED)
        .values(stage=Stage.ARCHIVED, updated_at=now)
    )
    model.status = ModelStatus.ARCHIVED
    model.updated_at = now
    await db.commit()
    log.info("model_archived", extra={"model_id": str(model.id)})
    await events.registry_changed(model_id=model.id)
    await events.record(_action("model.deleted", model, "model", model.id))


def _action(
    name: str, model: RegisteredModel, target_type: str, target_id: object, **details: Any
) -> Action:
    """Return the action `name` on `model` (or on one of its versions or aliases)."""
    return Action(
        name=name,
        target_type=target_type,
        target_id=str(target_id),
        owner_id=model.owner_id,
        model_id=model.id,
        details={"model": model.name, **details},
    )


async def _lock_model(db: AsyncSession, model: RegisteredModel) -> None:
    """Take the model's row lock: lifecycle and alias changes of one model run one at a time.

    An UPDATE rather than SELECT ... FOR UPDATE: it also takes SQLite's write lock at the start
    of the transaction, so two writers queue on the busy timeout instead of deadlocking.
    """
    await db.execute(
        update(RegisteredModel).where(RegisteredModel.id == model.id).values(updated_at=utcnow())
    )


# --- versions -----------------------------------------------------------------------------------


async def list_versions(
    db: AsyncSession, model: RegisteredModel, *, page: PageParams
) -> tuple[list[ModelVersion], int]:
    """Return one page of a model's versions, newest first, and their total."""
    where = ModelVersion.model_id == model.id
    total = await db.scalar(select(func.count()).select_from(ModelVersion).where(where))
    rows = await db.scalars(
        select(ModelVersion)
        .where(where)
        .order_by(ModelVersion.version.desc())
        .limit(page.limit)
        .offset(page.offset)
    )
    versions = list(rows)
    for version in versions:
        set_committed_value(version, "model", model)
    return versions, total or 0


async def get_version(db: AsyncSession, model: RegisteredModel, number: int) -> ModelVersion:
    """Return version `number` of `model`.

    Raises:
        VersionNotFound: the model has no such version.
    """
    version = await db.scalar(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.version == number
        )
    )
    if version is None:
        raise VersionNotFound(model.name, number)
    set_committed_value(version, "model", model)
    return version


async def update_version(
    db: AsyncSession,
    user: User,
    model: RegisteredModel,
    number: int,
    data: VersionUpdate,
    *,
    events: Events,
) -> ModelVersion:
    """Change a version's descriptive fields (never its artifact, number or stage)."""
    version = await get_version(db, model, number)
    changes = data.model_dump(exclude_unset=True)
    if changes.get("experiment_id") is not None:
        await experiments_service.get_experiment(db, user, changes["experiment_id"])
    if "metadata" in changes and COST_KEY in version.metadata_:
        # The server's cost estimate stays what the upload measured, whatever the metadata sent.
        changes["metadata"] = {**changes["metadata"], COST_KEY: version.metadata_[COST_KEY]}
    linked = version.experiment_id
    for name, value in changes.items():
        setattr(version, "metadata_" if name == "metadata" else name, value)
    version.updated_at = utcnow()
    if version.experiment_id is not None and (
        version.experiment_id != linked or "metrics" in changes
    ):
        # Newly linked, or new metrics while linked: they become the run's latest values.
        await experiments_service.record_version_metrics(db, version.experiment_id, version.metrics)
    await db.commit()
    # The input schema names the features predictions are matched by.
    await events.registry_changed(model_id=model.id)
    return version


async def transition_stage(
    db: AsyncSession, model: RegisteredModel, number: int, stage: Stage, *, events: Events
) -> ModelVersion:
    """Move a version to `stage`; promoting to production deprecates the previous one.

    Raises:
        VersionNotFound: no such version.
        Conflict: the model is archived.
    """
    await _lock_model(db, model)
    await db.refresh(model, ["status"])
    if model.status == ModelStatus.ARCHIVED:
        raise Conflict(f"model {model.name!r} is archived")
    version = await get_version(db, model, number)
    if version.stage == stage:
        await db.commit()
        return version
    now = utcnow()
    if stage == Stage.PRODUCTION:
        await db.execute(
            update(ModelVersion)
            .where(
                ModelVersion.model_id == model.id,
                ModelVersion.stage == Stage.PRODUCTION,
                ModelVersion.id != version.id,
            )
            .values(stage=Stage.DEPRECATED, updated_at=now)
        )
    previous = version.stage
    version.stage = stage
    version.updated_at = now
    try:
        await db.commit()
    except IntegrityError as exc:  # the partial unique index: one production version per model
        await db.rollback()
        raise Conflict("another version was promoted at the same time; try again") from exc
    log.info(
        "stage_changed",
        extra={"model_id": str(model.id), "version": number, "from": previous, "to": stage},
    )
    await events.registry_changed(model_id=model.id)
    await events.record(_stage_changed(model, version, previous))
    return version


def _stage_changed(model: RegisteredModel, version: ModelVersion, previous: str) -> Action:
    return _action(
        "model_version.stage_changed",
        model,
        "model_version",
        version.id,
        version=version.version,
        **{"from": str(previous), "to": str(version.stage)},
    )


async def archive_version(
    db: AsyncSession, model: RegisteredModel, number: int, *, events: Events
) -> None:
    """Archive a version: it is kept (and downloadable) but never served."""
    await _lock_model(db, model)
    version = await get_version(db, model, number)
    previous = version.stage
    if previous != Stage.ARCHIVED:
        version.stage = Stage.ARCHIVED
        version.updated_at = utcnow()
    await db.commit()
    await events.registry_changed(model_id=model.id)
    if previous != Stage.ARCHIVED:
        await events.record(_stage_changed(model, version, previous))


# --- aliases ------------------------------------------------------------------------------------


async def set_alias(
    db: AsyncSession, model: RegisteredModel, alias: str, number: int, *, events: Events
) -> ModelVersion:
    """Point `alias` at version `number` of `model` (moving it if it pointed elsewhere).

    Raises:
        VersionNotFound: no such version.
        Conflict: the version is archived.
    """
    await _lock_model(db, model)
    version = await get_version(db, model, number)
    if version.stage == Stage.ARCHIVED:
        raise Conflict(f"version {number} of model {model.name!r} is archived")
    row = await db.scalar(
        select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
    )
    previous = None if row is None else await _version_number(db, row.version_id)
    if row is None:
        db.add(ModelAlias(model_id=model.id, alias=alias, version_id=version.id))
    else:
        row.version_id = version.id
        row.updated_at = utcnow()
    await db.commit()
    await events.registry_changed(model_id=model.id)
    if previous != number:
        await events.record(_alias_changed(model, alias, number, previous))
    return version


async def _version_number(db: AsyncSession, version_id: uuid.UUID) -> int | None:
    return await db.scalar(select(ModelVersion.version).where(ModelVersion.id == version_id))


def _alias_changed(
    model: RegisteredModel, alias: str, number: int | None, previous: int | None
) -> Action:
    """The action of moving (or, with `number` None, removing) an alias."""
    return _action(
        "alias.changed",
        model,
        "alias",
        f"{model.id}:{alias}",
        alias=alias,
        version=number,
        previous=previous,
    )


async def delete_alias(
    db: AsyncSession, model: RegisteredModel, alias: str, *, events: Events
) -> None:
    """Remove `alias` from `model`.

    Raises:
        AliasNotFound: the model has no such alias.
    """
    await _lock_model(db, model)
    row = await db.scalar(
        select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
    )
    if row is None:
        raise AliasNotFound(model.name, alias)
    previous = await _version_number(db, row.version_id)
    await db.delete(row)
    await db.commit()
    await events.registry_changed(model_id=model.id)
    await events.record(_alias_changed(model, alias, None, previous))


# --- uploads ------------------------------------------------------------------------------------


async def register_version(
    db: AsyncSession,
    *,
    owner: User,
    form: UploadForm,
    file: ReceivedFile,
    store: ArtifactStore,
    prober: Prober,
    events: Events,
    tmp_dir: Path,
    reference_limits: TabularLimits,
) -> ModelVersion:
    """Check an uploaded artifact, store it and record it as the model's next version.

    The file is loaded only in a disposable child process. The artifact is stored under a fresh
    key before the transaction; if the transaction fails the object is deleted, so a row never
    points at a missing object and no object outlives a failed upload. With
    `form.reference_path`, that file of the owner's is read (Parquet through `tmp_dir`) as the
    version's drift reference before anything is stored, and its row commits with the version.

    Raises:
        UnsupportedModelFormat: the bytes are no model format we accept.
        ModelRejected: the file does not load, fails a check, or is another framework.
        Conflict: the model is archived.
        InvalidPath, FileNotFound, InvalidReferenceFile, Unprocessable: a `reference_path` that
            cannot be the version's reference (see `drift.reference.read_file`).
    """
    owner_id = owner.id
    if form.experiment_id is not None:
        await experiments_service.get_experiment(db, owner, form.experiment_id)
    # Give the connection back while the file is probed: that can take seconds. (Rolling back
    # expires loaded objects, hence `owner_id` above.)
    await db.rollback()
    # Reading the first bytes is quick, but a file system call all the same.
    fmt = await asyncio.to_thread(detect_format, file.path)
    framework = _framework(form.framework, fmt)
    report = await prober.probe(file.path, fmt, owner=owner_id)
    task_type = _reconcile_task_type(form, report)
    input_schema = _input_schema(form.input_schema, report)
    output_schema = form.output_schema if form.output_schema is not None else _outputs(report)
    reference = None
    if form.reference_path is not None:
        reference = await _read_reference(
            store,
            owner_id,
            form.reference_path,
            input_schema,
            tmp_dir=tmp_dir,
            limits=reference_limits,
        )

    key = f"{ARTIFACT_PREFIX}{uuid.uuid4().hex}"
    await store.put_file(key, file.path, sha256=file.sha256)
    try:
        model_id, number = await _next_version_number(db, owner_id, form, task_type)
        version = ModelVersion(
            model_id=model_id,
            version=number,
            stage=Stage.DEVELOPMENT,
            framework=framework,
            format=fmt,
            task_type=task_type,
            storage_key=key,
            file_size=file.size,
            sha256=file.sha256,
            description=form.description,
            input_schema=input_schema,
            output_schema=output_schema,
            metrics=form.metrics,
            hyperparameters=form.hyperparameters,
            tags=form.tags,
            metadata_=_metadata(form.metadata, report),
            experiment_id=form.experiment_id,
            created_by=owner_id,
        )
        db.add(version)
        await db.flush()
        if form.experiment_id is not None:
            await experiments_service.record_version_metrics(db, form.experiment_id, form.metrics)
        if reference is not None:
            db.add(reference.row(version_id=version.id, model_id=model_id, created_by=owner_id))
        model = await db.get_one(RegisteredModel, model_id)
        await db.commit()
    except BaseException:
        await db.rollback()
        # Shielded: a cancelled request must not leave the object behind.
        await asyncio.shield(store.delete(key))
        raise
    set_committed_value(version, "model", model)
    log.info(
        "version_registered",
        extra={
            "model_id": str(model_id),
            "version": number,
            "format": fmt.value,
            "size": file.size,
        },
    )
    await events.registry_changed(model_id=model_id)  # "the newest version" may be this one now
    await events.record(
        _action(
            "model_version.created",
            model,
            "model_version",
            version.id,
            version=number,
            framework=framework.value,
            format=fmt.value,
            stage=Stage.DEVELOPMENT.value,
            size=file.size,
            sha256=file.sha256,
        )
    )
    if reference is not None:
        await events.record(
            drift_reference.changed(
                model_id,
                owner_id,
                version.id,
                number,
                model_name=model.name,
                source="file",
                rows=reference.rows,
                path=reference.path,
            )
        )
    return version


async def _read_reference(
    store: ArtifactStore,
    owner_id: uuid.UUID,
    path: str,
    input_schema: dict[str, Any] | None,
    *,
    tmp_dir: Path,
    limits: TabularLimits,
) -> drift_reference.FileReference:
    features = drift_reference.schema_features(input_schema)
    if not features:
        raise Unprocessable(
            "a reference_path needs the features' names, and this file does not give them: "
            "pass an input_schema naming them"
        )
    return await drift_reference.read_file(
        store, owner_id=owner_id, path=path, features=features, tmp_dir=tmp_dir, limits=limits
    )


async def _next_version_number(
    db: AsyncSession, owner_id: uuid.UUID, form: UploadForm, task_type: str | None
) -> tuple[uuid.UUID, int]:
    """Create the model if new and take its next version number, without races.

    `max(version) + 1` loses most concurrent uploads (docs/architecture/security-notes.md); insert-or-ignore then
    `UPDATE ... RETURNING` serialises them on the model row, on SQLite and PostgreSQL alike.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "owner_id": owner_id,
        "name": form.name,
        "description": form.description,
        "task_type": task_type,
        "tags": form.tags,
        "status": ModelStatus.ACTIVE,
        "version_count": 0,
        "created_at": now,
        "updated_at": now,
    }
    dialect = db.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    await db.execute(
        insert(RegisteredModel)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["owner_id", "name"])
    )
    row = (
        await db.execute(
            update(RegisteredModel)
            .where(RegisteredModel.owner_id == owner_id, RegisteredModel.name == form.name)
            .values(version_count=RegisteredModel.version_count + 1, updated_at=now)
            .returning(RegisteredModel.id, RegisteredModel.version_count, RegisteredModel.status)
        )
    ).one()
    if row.status == ModelStatus.ARCHIVED:
        raise Conflict(f"model {form.name!r} is archived; choose another name")
    return row.id, row.version_count


def _framework(claimed: ModelFramework | None, fmt: ModelFormat) -> ModelFramework:
    """Return the version's framework: the file's, or the one claimed for an ONNX export.

    Raises:
        Unprocessable: the file is not the framework claimed (nor its ONNX export).
    """
    detected = ModelFramework(FRAMEWORK_OF[fmt].value)
    if claimed is None or claimed == detected:
        return detected
    if claimed in EXPORTED_TO_ONNX:
        if fmt is ModelFormat.ONNX:
            return claimed
        raise Unprocessable(
            f"the file is a {fmt.value} file ({detected.value}): a {claimed.value} model is "
            "uploaded as its ONNX export"
        )
    raise Unprocessable(f"the file is a {fmt.value} file ({detected.value}), not {claimed.value}")


def _reconcile_task_type(form: UploadForm, report: ProbeReport) -> str | None:
    if form.task_type is None:
        return report.task_type
    if report.task_type is not None and form.task_type != report.task_type:
        raise Unprocessable(
            f"task_type is {form.task_type.value!r} but the model is a {report.task_type} model"
        )
    return form.task_type.value


def _input_schema(given: InputSchema | None, report: ProbeReport) -> dict[str, Any] | None:
    """Return the input schema: the given one checked against the model, else the inferred one.

    A network's (an ONNX model that is not one table) records its input tensors under
    `tensors`: name, V2 datatype and shape (-1 for a dynamic dimension).
    """
    if report.inputs and report.n_features is None:
        tensors = {"tensors": [_tensor(spec, spec["type"]) for spec in report.inputs]}
        return tensors if given is None else {**given.model_dump(), **tensors}
    if given is None:
        names = report.feature_names or (
            [f"f{i}" for i in range(report.n_features)] if report.n_features else None
        )
        if names is None:
            return None
        return {"features": [{"name": n, "type": "float"} for n in names]}
    if report.n_features is not None and len(given.features) != report.n_features:
        raise Unprocessable(
            f"input_schema lists {len(given.features)} features; the model takes "
            f"{report.n_features}"
        )
    if report.feature_names is not None and given.names() != report.feature_names:
        raise Unprocessable(
            "input_schema feature names differ from the model's: " + ", ".join(report.feature_names)
        )
    return given.model_dump()


def _metadata(given: dict[str, Any], report: ProbeReport) -> dict[str, Any]:
    """Return the version's metadata: the uploader's, with the server's cost estimate."""
    if report.cost is None:
        return given
    return {**given, COST_KEY: report.cost}


def _tensor(spec: dict[str, Any], dtype: str) -> dict[str, Any]:
    datatype = to_datatype(np.dtype(dtype))
    return {"name": spec["name"], "datatype": datatype, "shape": list(spec["shape"])}


def _outputs(report: ProbeReport) -> dict[str, Any] | None:
    if report.inputs and report.n_features is None:
        # A network's output tensors, described like its inputs.
        return {"tensors": [_tensor(spec, spec["dtype"]) for spec in report.outputs]}
    schema: dict[str, Any] = {"outputs": list(report.outputs)}
    if report.classes is not None:
        schema["classes"] = list(report.classes)
    return schema if report.outputs or report.classes else None


async def referenced_keys(db: AsyncSession, keys: Sequence[str]) -> set[str]:
    """Return which of `keys` a model version points to (archived ones included)."""
    rows = await db.scalars(
        select(ModelVersion.storage_key).where(ModelVersion.storage_key.in_(keys))
    )
    return set(rows)


async def version_download_link(
    db: AsyncSession,
    model: RegisteredModel,
    number: int,
    *,
    store: ArtifactStore,
    signer: UrlSigner,
    expires_in: int,
    max_expires_in: int,
    via_app: bool,
    events: Events,
) -> DownloadUrl:
    """Return a link that downloads a version's artifact without credentials for a while.

    Raises:
        VersionNotFound: no such version.
        Unprocessable: `expires_in` is not within 1..`max_expires_in` seconds.
    """
    version = await get_version(db, model, number)
    link = await download_link(
        store,
        signer,
        LinkTarget(
            key=version.storage_key,
            owner_id=model.owner_id,
            sha256=version.sha256,
            version_id=version.id,
        ),
        filename=download_filename(model, version),
        expires_in=expires_in,
        max_expires_in=max_expires_in,
        via_app=via_app,
    )
    await events.record(
        _action(
            "download_link.issued",
            model,
            "model_version",
            version.id,
            version=number,
            expires_at=link.expires_at.isoformat(),
        )
    )
    return link


def download_filename(model: RegisteredModel, version: ModelVersion) -> str:
    """Return the file name a download is saved as: `<model>-v<version><ext>`."""
    return f"{model.name}-v{version.version}{FILE_EXTENSIONS.get(version.format, '')}"


async def frameworks_in_use(db: AsyncSession) -> set[Framework]:
    """Return the runtimes the registry's versions need (what a process may be asked to serve):
    by format, since a PyTorch, TensorFlow or Keras version is served as ONNX."""
    rows = await db.scalars(select(ModelVersion.format).distinct())
    return {FRAMEWORK_OF[ModelFormat(value)] for value in rows if value in set(ModelFormat)}
