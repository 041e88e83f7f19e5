"""Dashboard pages of the user's file area (the API's `/api/v1/files`): list, upload, download,
delete; and starting a batch job on one of the files (the API's `POST /api/v1/batch-jobs`)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from modelyard.artifacts.http import object_response
from modelyard.artifacts.uploads import receive_upload
from modelyard.auth.service import Caller
from modelyard.db.deps import SessionDep
from modelyard.errors import ModelyardError
from modelyard.files import service as files_service
from modelyard.jobs import service as jobs_service
from modelyard.jobs.schemas import BatchJobCreate, JobFormat
from modelyard.registry import service as registry_service
from modelyard.schemas import PageParams
from modelyard.web.http import (
    CSRF_FIELD,
    CrossSiteRequest,
    FormDep,
    Page,
    UserPage,
    WebRoute,
    check_csrf,
    check_origin,
    problem_text,
    redirect,
    render,
)

router = APIRouter(route_class=WebRoute, include_in_schema=False)

PAGE_SIZE = 50
CHOICES = 100  # models and files offered in the new job's form
Offset = Annotated[int, Query(ge=0, le=2**31)]
FilePath = Annotated[str, Query(min_length=1, max_length=1024)]


async def _files_page(
    page: Page, db: SessionDep, prefix: str = "", offset: int = 0, status: int = 200, **extra: Any
) -> Response:
    files, total = await files_service.list_files(
        page.state.store,
        owner_id=page.signed_in.id,
        prefix=prefix or None,
        page=PageParams(limit=PAGE_SIZE, offset=offset),
    )
    context: dict[str, Any] = {"error": None, **extra}
    return render(
        page,
        "files.html",
        status,
        files=files,
        total=total,
        offset=offset,
        limit=PAGE_SIZE,
        prefix=prefix,
        query={"prefix": prefix} if prefix else {},
        **context,
    )


@router.get("/files")
async def files(
    page: UserPage,
    db: SessionDep,
    prefix: Annotated[str, Query(max_length=1024)] = "",
    offset: Offset = 0,
) -> Response:
    """The signed-in user's files by path (a prefix narrows them), with upload and delete."""
    try:
        return await _files_page(page, db, prefix, offset)
    except ModelyardError as exc:  # a prefix that can never be a path
        return await _files_page(page, db, status=exc.status, error=exc.detail)


@router.post("/files/upload")
async def upload(request: Request, page: UserPage, db: SessionDep) -> Response:
    """Store an uploaded file as the API does (the upload limit and the storage quota); the
    origin is checked before the body is read, the CSRF token before the file is stored."""
    check_origin(request)
    owner_id = page.signed_in.id
    state = page.state
    settings = state.settings
    try:
        max_bytes, too_large = await files_service.upload_room(
            db,
            state.store,
            owner_id=owner_id,
            max_upload_bytes=settings.max_upload_bytes,
            quota_bytes=settings.storage_quota_bytes,
        )
        await db.close()  # as the API route: no connection held while the file streams in
        async with receive_upload(
            request,
            tmp_dir=settings.data_dir / "tmp",
            max_bytes=max_bytes,
            too_large=too_large,
            allowed_fields=frozenset({"path", CSRF_FIELD}),
        ) as received:
            check_csrf(page, received.fields)
            await files_service.store_file(
                db,
                state.store,
                owner_id=owner_id,
                path=received.fields.get("path", "").strip() or None,
                received=received.file,
                quota_bytes=settings.storage_quota_bytes,
                events=state.events,
            )
    except CrossSiteRequest:
        raise
    except ModelyardError as exc:
        return await _files_page(page, db, status=exc.status, error=exc.detail)
    return redirect("/files")


@router.get("/files/download")
async def download(path: FilePath, page: UserPage, request: Request) -> Response:
    stream = await files_service.open_file(page.state.store, owner_id=page.signed_in.id, path=path)
    return object_response(stream, filename=PurePosixPath(path).name, etag=None, request=request)


@router.post("/files/delete")
async def delete(page: UserPage, form: FormDep, db: SessionDep) -> Response:
    path = str(form.get("path", ""))
    await files_service.delete_file(
        db, page.state.store, owner_id=page.signed_in.id, path=path, events=page.state.events
    )
    return redirect("/files")


# --- starting a batch job ---------------------------------------------------------------------


async def _new_job_page(
    page: Page, db: SessionDep, values: dict[str, str], status: int = 200, error: str | None = None
) -> Response:
    user = page.signed_in
    models, _ = await registry_service.list_models(
        db, user, page=PageParams(limit=CHOICES, offset=0), sort="name"
    )
    files, _ = await files_service.list_files(
        page.state.store, owner_id=user.id, prefix=None, page=PageParams(limit=CHOICES, offset=0)
    )
    # What was chosen (a file's Score link, a refused form) stays a choice past the first ones.
    return render(
        page,
        "job_new.html",
        status,
        models=_with(values.get("model", ""), [view.model.name for view in models]),
        files=_with(values.get("input_path", ""), [f.path for f in files]),
        formats=[f.value for f in JobFormat],
        values=values,
        error=error,
    )


def _with(chosen: str, choices: list[str]) -> list[str]:
    return [chosen, *choices] if chosen and chosen not in choices else choices


@router.get("/jobs/new")
async def new_job(
    page: UserPage,
    db: SessionDep,
    model: Annotated[str, Query(max_length=128)] = "",
    input_path: Annotated[str, Query(max_length=1024)] = "",
) -> Response:
    """The form that starts a batch job: a model, its version, a file of the user's."""
    return await _new_job_page(page, db, {"model": model, "input_path": input_path})


def _job_body(values: dict[str, str]) -> BatchJobCreate:
    version: str | int | None = values.get("version", "").strip() or None
    if isinstance(version, str) and version.isdecimal():
        version = int(version)
    input_path = values.get("input_path", "")
    output_path = values.get("output_path", "").strip()
    if not output_path and input_path:
        stem = PurePosixPath(input_path)
        output_path = str(stem.with_name(f"{stem.stem}-scored{stem.suffix or '.csv'}"))
    return BatchJobCreate.model_validate(
        {
            "model": values.get("model", ""),
            "version": version,
            "input_path": input_path,
            "output_path": output_path,
            "format": values.get("format") or JobFormat.CSV.value,
        }
    )


@router.post("/jobs")
async def start_job(page: UserPage, form: FormDep, db: SessionDep) -> Response:
    """Start a batch job through the API's service (same checks, same queue)."""
    values = {k: v for k, v in form.items() if isinstance(v, str) and k != CSRF_FIELD}
    state = page.state
    try:
        body = _job_body(values)
        assert state.batch_jobs is not None  # noqa: S101 - set up with the API and the pages
        await jobs_service.create_job(
            db,
            Caller(page.signed_in, None),
            body,
            store=state.store,
            queue=state.batch_jobs,
            events=state.events,
            max_active=state.settings.batch_job_max_active_per_account,
        )
    except ValidationError as exc:
        return await _new_job_page(page, db, values, 422, problem_text(exc))
    except ModelyardError as exc:
        return await _new_job_page(page, db, values, exc.status, exc.detail)
    return redirect("/jobs")
