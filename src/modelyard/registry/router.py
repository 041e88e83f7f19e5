"""Routes of `/api/v1/models`: uploads, models, versions, lifecycle, aliases, downloads."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from modelyard.artifacts.deps import StoreDep
from modelyard.artifacts.http import absolute_url, stream_object_response
from modelyard.artifacts.signing import UrlSigner
from modelyard.artifacts.uploads import receive_upload
from modelyard.auth.deps import CallerDep, CurrentUser
from modelyard.auth.scopes import Scope
from modelyard.changes.deps import EventsDep
from modelyard.db.deps import SessionDep
from modelyard.db.tables import ModelVersion
from modelyard.deps import SettingsDep
from modelyard.drift import reference as drift_reference
from modelyard.edge.routing import make_router
from modelyard.registry import service
from modelyard.registry.deps import OwnedModel, ProberDep, VersionNumber
from modelyard.registry.schemas import (
    UPLOAD_FIELDS,
    UPLOAD_JSON_FIELDS,
    AliasName,
    AliasTarget,
    ModelDetail,
    ModelFramework,
    ModelRead,
    ModelSort,
    ModelUpdate,
    Stage,
    StageChange,
    TaskType,
    UploadForm,
    VersionRead,
    VersionUpdate,
)
from modelyard.schemas import DownloadUrl, Page, PageDep, make_page

router = make_router(prefix="/api/v1/models", tags=["registry"])

_TEXT = {"type": "string"}
_JSON_TEXT = {"type": "string", "description": "a JSON document"}
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": _TEXT,
                        "description": _TEXT,
                        "framework": {"type": "string", "enum": [f.value for f in ModelFramework]},
                        "task_type": {"type": "string", "enum": [t.value for t in TaskType]},
                        "experiment_id": {"type": "string", "format": "uuid"},
                        "reference_path": {
                            "type": "string",
                            "description": "a CSV or Parquet file in your file area: the "
                            "version's drift reference",
                        },
                        **dict.fromkeys(sorted(UPLOAD_JSON_FIELDS), _JSON_TEXT),
                    },
                }
            }
        },
    }
}


def parse_upload_form(fields: dict[str, str]) -> UploadForm:
    """Validate the text fields of an upload (JSON ones decoded strictly) or answer 422."""
    data: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for name, value in fields.items():
        if name in UPLOAD_JSON_FIELDS:
            try:
                data[name] = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                errors.append(
                    {"loc": ("body", name), "msg": f"invalid JSON: {exc}", "type": "json_invalid"}
                )
        elif value != "" or name == "name":
            # Empty optional fields, as HTML forms send them, mean "not given".
            data[name] = value
    if errors:
        raise RequestValidationError(errors)
    try:
        return UploadForm.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from exc


@router.post(
    "/upload",
    status_code=status.HTTP_201_CREATED,
    response_model=VersionRead,
    openapi_extra=_UPLOAD_BODY,
    responses={413: {"description": "file too large"}, 415: {"description": "not a model file"}},
)
async def upload_model(
    request: Request,
    caller: CallerDep,
    user: CurrentUser,
    db: SessionDep,
    events: EventsDep,
    settings: SettingsDep,
    store: StoreDep,
    prober: ProberDep,
) -> ModelVersion:
    """Upload a model file as the next version of the model `name` (created if new).

    The file is checked and loaded in a disposable child process before anything is stored;
    pickle and joblib files only through the class allowlist. With `reference_path`, that file
    becomes the version's drift reference, stored with it (a file that cannot be one refuses
    the upload).
    """
    # Authenticated: give the connection back before a possibly long upload holds it.
    await db.close()
    async with receive_upload(
        request,
        tmp_dir=settings.data_dir / "tmp",
        max_bytes=settings.max_upload_bytes,
        allowed_fields=UPLOAD_FIELDS,
    ) as upload:
        form = parse_upload_form(upload.fields)
        # The one route whose model is in the body: a key limited to models is checked here.
        caller.require(Scope.WRITE, model=form.name)
        if form.reference_path is not None:
            # A file of the caller's is read: the files routes' right, before it is looked at.
            caller.require(Scope.READ, model=None)
        version = await service.register_version(
            db,
            owner=user,
            form=form,
            file=upload.file,
            store=store,
            prober=prober,
            events=events,
            tmp_dir=settings.data_dir / "tmp",
            reference_limits=drift_reference.limits_of(settings),
        )
    return version


@router.get("", response_model=Page[ModelRead])
async def list_models(
    user: CurrentUser,
    db: SessionDep,
    page: PageDep,
    search: Annotated[str | None, Query(max_length=200)] = None,
    stage: Stage | None = None,
    framework: ModelFramework | None = None,
    task_type: TaskType | None = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    include_archived: bool = False,
    sort: ModelSort = "-created_at",
) -> Page[ModelRead]:
    """List the caller's models, filtered, sorted and paged."""
    views, total = await service.list_models(
        db,
        user,
        page=page,
        search=search,
        stage=stage,
        framework=framework,
        task_type=task_type,
        tag=tag,
        include_archived=include_archived,
        sort=sort,
    )
    return make_page(ModelRead, [_model_fields(v) for v in views], total, page)


@router.get("/{model}", response_model=ModelDetail)
async def get_model(model: OwnedModel, db: SessionDep) -> dict[str, Any]:
    """Show a model with its versions summarised."""
    return _model_fields(await service.describe_model(db, model, with_versions=True))


@router.patch("/{model}", response_model=ModelRead)
async def update_model(model: OwnedModel, body: ModelUpdate, db: SessionDep) -> dict[str, Any]:
    """Change a model's description, task type or tags."""
    return _model_fields(await service.update_model(db, model, body))


@router.delete("/{model}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_model(model: OwnedModel, db: SessionDep, events: EventsDep) -> None:
    """Archive a model and all its versions (soft delete: nothing is erased)."""
    await service.archive_model(db, model, events=events)


@router.get("/{model}/versions", response_model=Page[VersionRead])
async def list_versions(model: OwnedModel, db: SessionDep, page: PageDep) -> Page[VersionRead]:
    """List a model's versions, newest first."""
    versions, total = await service.list_versions(db, model, page=page)
    return make_page(VersionRead, versions, total, page)


@router.get("/{model}/versions/{version}", response_model=VersionRead)
async def get_version(model: OwnedModel, version: VersionNumber, db: SessionDep) -> ModelVersion:
    """Show one version."""
    return await service.get_version(db, model, version)


@router.patch("/{model}/versions/{version}", response_model=VersionRead)
async def update_version(
    model: OwnedModel,
    version: VersionNumber,
    body: VersionUpdate,
    db: SessionDep,
    user: CurrentUser,
    events: EventsDep,
) -> ModelVersion:
    """Change a version's description, metrics, hyperparameters, tags, metadata or schemas."""
    return await service.update_version(db, user, model, version, body, events=events)


@router.patch("/{model}/versions/{version}/lifecycle", response_model=VersionRead)
async def transition_stage(
    model: OwnedModel, version: VersionNumber, body: StageChange, db: SessionDep, events: EventsDep
) -> ModelVersion:
    """Move a version to another stage; a new production version deprecates the previous one."""
    return await service.transition_stage(db, model, version, body.stage, events=events)


@router.delete("/{model}/versions/{version}", status_code=status.HTTP_204_NO_CONTENT)
async def archive_version(
    model: OwnedModel, version: VersionNumber, db: SessionDep, events: EventsDep
) -> None:
    """Archive a version: kept and downloadable, never served."""
    await service.archive_version(db, model, version, events=events)


@router.put("/{model}/aliases/{alias}", response_model=VersionRead)
async def set_alias(
    model: OwnedModel, alias: AliasName, body: AliasTarget, db: SessionDep, events: EventsDep
) -> ModelVersion:
    """Point an alias such as "champion" at one of the model's versions."""
    return await service.set_alias(db, model, alias, body.version, events=events)


@router.delete("/{model}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_alias(
    model: OwnedModel, alias: AliasName, db: SessionDep, events: EventsDep
) -> None:
    """Remove an alias."""
    await service.delete_alias(db, model, alias, events=events)


@router.get(
    "/{model}/versions/{version}/download",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download_version(
    request: Request, model: OwnedModel, version: VersionNumber, db: SessionDep, store: StoreDep
) -> Response:
    """Download the version's artifact, streamed, with its sha256 as `ETag`."""
    row = await service.get_version(db, model, version)
    return await stream_object_response(
        store,
        row.storage_key,
        filename=service.download_filename(model, row),
        etag=row.sha256,
        request=request,
    )


@router.get("/{model}/versions/{version}/download-url", response_model=DownloadUrl)
async def download_url(
    request: Request,
    model: OwnedModel,
    version: VersionNumber,
    db: SessionDep,
    events: EventsDep,
    settings: SettingsDep,
    store: StoreDep,
    expires_in: Annotated[int, Query(description="seconds, 1 up to the server's maximum")] = 300,
) -> DownloadUrl:
    """Return a URL that downloads the artifact without credentials until it expires.

    A link of this server (local storage, or `MODELYARD_DOWNLOAD_LINKS_VIA_APP`) is bound to
    the version, its sha256 and the model's owner: once the version or model is archived or the
    owner deactivated, it answers 410. An S3 presigned URL is checked by the bucket alone."""
    link = await service.version_download_link(
        db,
        model,
        version,
        store=store,
        signer=UrlSigner(settings.secret),
        expires_in=expires_in,
        max_expires_in=settings.presign_max_expires_seconds,
        via_app=settings.download_links_via_app,
        events=events,
    )
    return DownloadUrl(url=absolute_url(request, link.url), expires_at=link.expires_at)


def _model_fields(view: service.ModelView) -> dict[str, Any]:
    model = view.model
    return {
        "id": model.id,
        "name": model.name,
        "owner_id": model.owner_id,
        "description": model.description,
        "task_type": model.task_type,
        "tags": model.tags,
        "status": model.status,
        "latest_version": view.latest_version,
        "production_version": view.production_version,
        "version_count": model.version_count,
        "aliases": view.aliases,
        "created_at": model.created_at,
        "updated_at": model.updated_at,
        "versions": view.versions,
    }
