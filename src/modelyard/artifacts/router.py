"""`GET /api/v1/artifacts/signed/{key}`: downloads through a signed link, without credentials."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request, Response

from modelyard.artifacts.deps import StoreDep
from modelyard.artifacts.http import stream_object_response
from modelyard.artifacts.signing import SIGNED_PATH, UrlSigner
from modelyard.routing import make_router
from modelyard.state import app_state

router = make_router(prefix=SIGNED_PATH, tags=["artifacts"])

_SIGNED_DESCRIPTION = """\
Download an object through a link made by a `download-url` or `presigned-url` route of this
server (local storage; S3 storage gives links to the bucket instead). No credentials: the link
is the credential. The key, expiry and filename are signed with HMAC-SHA256; any change answers
**403** `download-link-invalid`, and a link past `expires` answers **403**
`download-link-expired`.
"""


@router.get(
    "/{key:path}",
    description=_SIGNED_DESCRIPTION,
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the bytes"},
        403: {"description": "signature invalid or link expired"},
        404: {"description": "the object no longer exists"},
    },
)
async def download_signed(
    key: str,
    expires: Annotated[int, Query(ge=0, le=2**62)],
    signature: Annotated[str, Query(max_length=128)],
    request: Request,
    store: StoreDep,
    filename: Annotated[str | None, Query(max_length=1024)] = None,
) -> Response:
    """Stream an object to whoever holds a valid, unexpired signed link."""
    signer = UrlSigner(app_state(request).settings.secret)
    signer.verify(key, expires, filename, signature)
    return await stream_object_response(
        store, key, filename=filename or key.rsplit("/", 1)[-1], etag=None, request=request
    )
