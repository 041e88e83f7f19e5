"""Routes of `/api/v1/files`: the caller's own file area."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import Query, Request, Response, status

from modelyard.artifacts.deps import StoreDep
from modelyard.artifacts.http import absolute_url, object_response
from modelyard.artifacts.signing import UrlSigner
from modelyard.artifacts.uploads import receive_upload
from modelyard.auth.deps import CurrentUser
from modelyard.changes.deps import EventsDep
from modelyard.db.deps import SessionDep
from modelyard.deps import SettingsDep
from modelyard.edge.routing import make_router
from modelyard.files import service
from modelyard.files.schemas import FileRead, FileStored
from modelyard.schemas import DownloadUrl, Page, PageDep

router = make_router(prefix="/api/v1/files", tags=["files"])

_PATH_RULES = (
    "Paths are relative to the caller's own area and checked after percent-decoding: empty, "
    "absolute (`/x`, `C:\\x`), backslashes, NUL and other control characters, empty, `.` or `..` "
    "segments and paths over 1024 bytes answer 400. A `%` is an ordinary character: "
    "`%252e%252e` names a file called `%2e%2e`, never a parent folder."
)

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "path": {
                            "type": "string",
                            "description": "where to store it; default the file's name",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/upload",
    status_code=status.HTTP_201_CREATED,
    response_model=FileStored,
    openapi_extra=_UPLOAD_BODY,
    description="Store a file in the caller's area; a file already at that path is replaced. "
    "Past the account's storage quota (`MODELYARD_STORAGE_QUOTA_BYTES`; a file being replaced "
    "counts until the new one is stored) the upload answers 403 `storage-quota-exceeded` and "
    "nothing is kept. " + _PATH_RULES,
)
async def upload_file(
    request: Request,
    user: CurrentUser,
    db: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    events: EventsDep,
) -> FileStored:
    """Upload a file (multipart `file`, optional `path`); 413 past the upload limit, 403 past
    the storage quota (as soon as the body passes what is left of it)."""
    owner_id = user.id
    max_bytes, too_large = await service.upload_room(
        db,
        store,
        owner_id=owner_id,
        max_upload_bytes=settings.max_upload_bytes,
        quota_bytes=settings.storage_quota_bytes,
    )
    # Authenticated: give the connection back before a possibly long upload holds it.
    await db.close()
    async with receive_upload(
        request,
        tmp_dir=settings.data_dir / "tmp",
        max_bytes=max_bytes,
        too_large=too_large,
        allowed_fields=frozenset({"path"}),
    ) as upload:
        return await service.store_file(
            db,
            store,
            owner_id=owner_id,
            path=upload.fields.get("path"),
            received=upload.file,
            quota_bytes=settings.storage_quota_bytes,
            events=events,
        )


@router.get("", response_model=Page[FileRead])
async def list_files(
    user: CurrentUser,
    store: StoreDep,
    page: PageDep,
    prefix: Annotated[str | None, Query(max_length=1024)] = None,
) -> Page[FileRead]:
    """List the caller's files by path, optionally those whose path starts with `prefix`."""
    items, total = await service.list_files(store, owner_id=user.id, prefix=prefix, page=page)
    return Page[FileRead](items=items, total=total, limit=page.limit, offset=page.offset)


@router.get(
    "/download/{path:path}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the bytes"}},
    description="Stream one of the caller's files as an attachment. " + _PATH_RULES,
)
async def download_file(
    path: str, request: Request, user: CurrentUser, store: StoreDep
) -> Response:
    """Download one of the caller's files."""
    stream = await service.open_file(store, owner_id=user.id, path=path)
    return object_response(stream, filename=PurePosixPath(path).name, etag=None, request=request)


@router.get(
    "/presigned-url/{path:path}",
    response_model=DownloadUrl,
    description="A URL that downloads the file without credentials until it expires (S3 presign "
    "on S3 storage, a link signed by this server on local storage or with "
    "`MODELYARD_DOWNLOAD_LINKS_VIA_APP`). A link of this server is bound to the file's content "
    "and its owner: once the file is deleted or replaced, or the owner deactivated, it answers "
    "410. " + _PATH_RULES,
)
async def presigned_url(
    path: str,
    request: Request,
    user: CurrentUser,
    store: StoreDep,
    settings: SettingsDep,
    events: EventsDep,
    expires_in: Annotated[int, Query(description="seconds, 1 up to the server's maximum")] = 300,
) -> DownloadUrl:
    """Make a temporary download link for one of the caller's files."""
    link = await service.presign_file(
        store,
        UrlSigner(settings.secret),
        owner_id=user.id,
        path=path,
        expires_in=expires_in,
        max_expires_in=settings.presign_max_expires_seconds,
        via_app=settings.download_links_via_app,
        events=events,
    )
    return DownloadUrl(url=absolute_url(request, link.url), expires_at=link.expires_at)


@router.delete(
    "/{path:path}",
    status_code=status.HTTP_204_NO_CONTENT,
    description="Delete one of the caller's files. " + _PATH_RULES,
)
async def delete_file(
    path: str, user: CurrentUser, db: SessionDep, store: StoreDep, events: EventsDep
) -> None:
    """Delete one of the caller's files."""
    await service.delete_file(db, store, owner_id=user.id, path=path, events=events)
