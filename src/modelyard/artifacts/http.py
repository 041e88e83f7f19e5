"""Artifact downloads over HTTP: Content-Disposition, ETag/304 and streamed bodies."""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from modelyard.artifacts.store import ArtifactStore, ObjectStream

# RFC 8187 attr-char (besides ALPHA / DIGIT, which quote never escapes).
_ATTR_CHARS = "!#$&+-.^_`|~"
FALLBACK_FILENAME = "download"


# Control, format (bidi overrides such as U+202E, zero-width), line and paragraph separators,
# private-use, surrogate and unassigned characters: none belongs in a file name, and a right-to-
# left override makes `invoice\u202efdp.exe` display as `invoiceexe.pdf`.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"})


def safe_filename(filename: str) -> str:
    """Return `filename` with every control, format or separator character replaced by `_`."""
    return "".join("_" if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in filename)


def content_disposition(filename: str) -> str:
    """Return an RFC 6266 `attachment` header value that any browser saves under `filename`.

    Control, bidi and other format characters and line separators become `_` in both names.
    Old clients read the ASCII `filename` (non-ASCII, quotes and backslashes also become `_`);
    the others read the UTF-8 name from `filename*`.
    """
    filename = safe_filename(filename)
    ascii_name = "".join(
        ch if " " <= ch <= "~" and ch not in '"\\' else "_" for ch in filename
    ).strip()
    ascii_name = ascii_name or FALLBACK_FILENAME
    encoded = quote(filename or FALLBACK_FILENAME, safe=_ATTR_CHARS)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}"


def quoted_etag(sha256: str) -> str:
    """Return the strong ETag of an object with this digest."""
    return f'"{sha256}"'


def etag_matches(request: Request, etag: str) -> bool:
    """Tell whether `If-None-Match` names `etag` (or is `*`)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def object_response(
    stream: ObjectStream, *, filename: str, etag: str | None, request: Request
) -> Response:
    """Answer with an opened object: streamed, as an attachment, 304 if the client has it.

    `etag` is the object's sha256 when the caller knows it (else the store's record is used).
    """
    sha256 = etag or stream.info.sha256
    headers = {
        "Content-Disposition": content_disposition(filename),
        "X-Content-Type-Options": "nosniff",
        # Downloads need credentials or a signed link: shared caches must not keep them.
        "Cache-Control": "private, no-cache",
    }
    if sha256:
        headers["ETag"] = quoted_etag(sha256)
        if etag_matches(request, headers["ETag"]):
            return Response(
                status_code=304,
                headers={"ETag": headers["ETag"], "Cache-Control": headers["Cache-Control"]},
                background=BackgroundTask(stream.aclose),
            )
    headers["Content-Length"] = str(stream.info.size)
    return StreamingResponse(
        _closing(stream), media_type="application/octet-stream", headers=headers
    )


async def stream_object_response(
    store: ArtifactStore, key: str, *, filename: str, etag: str | None, request: Request
) -> Response:
    """Open `key` and answer with it; with a known `etag`, a matching client gets 304 unread.

    Raises:
        ObjectNotFound: no object has this key (before anything is sent).
    """
    if etag is not None and etag_matches(request, quoted_etag(etag)):
        return Response(
            status_code=304,
            headers={"ETag": quoted_etag(etag), "Cache-Control": "private, no-cache"},
        )
    stream = await store.open(key)
    return object_response(stream, filename=filename, etag=etag, request=request)


def absolute_url(request: Request, url: str) -> str:
    """Return `url` as is when absolute (S3), else joined to the app's base URL (local)."""
    if url.startswith(("http://", "https://")):
        return url
    return str(request.base_url).rstrip("/") + url


async def _closing(stream: ObjectStream) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    finally:
        await stream.aclose()
