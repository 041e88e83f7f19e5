"""`GET /api/v1/artifacts/signed/{key}`: downloads through a signed link, without credentials."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Query, Request, Response

from modelyard.artifacts.deps import StoreDep
from modelyard.artifacts.http import object_response
from modelyard.artifacts.signing import SIGNED_PATH, BadSignature, LinkTarget, UrlSigner
from modelyard.artifacts.store import ObjectNotFound
from modelyard.db.deps import SessionDep
from modelyard.deps import SettingsDep
from modelyard.downloads.links import LinkGone, check_link
from modelyard.edge.routing import make_router

router = make_router(prefix=SIGNED_PATH, tags=["artifacts"])

_SIGNED_DESCRIPTION = """\
Download an object through a link made by a `download-url` or `presigned-url` route of this
server (local storage, or S3 with `MODELYARD_DOWNLOAD_LINKS_VIA_APP`; S3 storage otherwise gives
links to the bucket). No credentials: the link is the credential. The key, the object's sha256,
its owner, the model version, the expiry and the filename are signed with HMAC-SHA256; any
change answers **403** `download-link-invalid`, and a link past `expires` answers **403**
`download-link-expired`. A link whose object was deleted or replaced (another sha256), whose
version or model was archived, or whose owner was deactivated answers **410**
`download-link-gone`.
"""


@router.get(
    "/{key:path}",
    description=_SIGNED_DESCRIPTION,
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the bytes"},
        403: {"description": "signature invalid or link expired"},
        410: {"description": "the object, its version or its owner is no longer available"},
    },
)
async def download_signed(
    key: str,
    expires: Annotated[int, Query(ge=0, le=2**62)],
    signature: Annotated[str, Query(max_length=128)],
    request: Request,
    store: StoreDep,
    db: SessionDep,
    settings: SettingsDep,
    owner: uuid.UUID | None = None,
    sha256: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    version: uuid.UUID | None = None,
    filename: Annotated[str | None, Query(max_length=1024)] = None,
) -> Response:
    """Stream an object to whoever holds a valid, unexpired link that still holds."""
    if owner is None or sha256 is None:  # a link from before links were bound
        raise BadSignature
    target = LinkTarget(key=key, owner_id=owner, sha256=sha256, version_id=version)
    UrlSigner(settings.secret).verify(target, expires, filename, signature)
    await check_link(db, target)
    # Checked: give the connection back before a possibly long download.
    await db.close()
    try:
        stream = await store.open(key, sha256=sha256)
    except ObjectNotFound as exc:  # deleted, or replaced by other bytes
        raise LinkGone from exc
    return object_response(
        stream, filename=filename or key.rsplit("/", 1)[-1], etag=sha256, request=request
    )
