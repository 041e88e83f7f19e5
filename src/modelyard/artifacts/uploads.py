"""Streaming `multipart/form-data` uploads: one file part to a temp file, small text fields.

Not `request.form()`: Starlette spools files with limits of its own and hands them over only
after the whole body has arrived. Here the file is hashed, counted and written as it streams, and
refused (413) the moment it passes its limit, without reading the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from modelyard.errors import (
    BadRequest,
    ModelyardError,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
)

MAX_FIELD_BYTES = 1024 * 1024
MAX_FIELDS_BYTES = 4 * 1024 * 1024


@dataclass
class ReceivedFile:
    path: Path
    size: int
    sha256: str
    filename: str | None
    content_type: str | None


@dataclass
class MultipartUpload:
    fields: dict[str, str]
    file: ReceivedFile


@asynccontextmanager
async def receive_upload(
    request: Request,
    *,
    tmp_dir: Path,
    max_bytes: int,
    file_field: str = "file",
    allowed_fields: frozenset[str],
    max_field_bytes: int = MAX_FIELD_BYTES,
    max_fields_bytes: int = MAX_FIELDS_BYTES,
    too_large: Callable[[], ModelyardError] | None = None,
) -> AsyncIterator[MultipartUpload]:
    """Receive a multipart body: its `file_field` part into `tmp_dir`, other parts as text.

    The temp file is removed when the block exits, whatever happens: move or upload it inside.

    Raises:
        UnsupportedMediaType: the body is not `multipart/form-data`.
        BadRequest: the body is malformed or ends early.
        PayloadTooLarge: the file passes `max_bytes` (or what `too_large` returns, such as a
            storage quota's refusal), or a field its own limits.
        Unprocessable: the file part is missing or repeated, a field is unknown or repeated.
    """
    receiver = _Receiver(
        tmp_dir=tmp_dir,
        max_bytes=max_bytes,
        file_field=file_field,
        allowed_fields=allowed_fields,
        max_field_bytes=max_field_bytes,
        max_fields_bytes=max_fields_bytes,
        too_large=too_large,
    )
    try:
        yield await receiver.receive(request)
    finally:
        receiver.discard()


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise UnsupportedMediaType("send the upload as multipart/form-data")
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("the multipart content type has no boundary")
    return boundary


@dataclass
class _Part:
    name: str
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)


class _Receiver:
    """The parser's callbacks queue events; `receive` acts on them between body chunks."""

    def __init__(
        self,
        *,
        tmp_dir: Path,
        max_bytes: int,
        file_field: str,
        allowed_fields: frozenset[str],
        max_field_bytes: int,
        max_fields_bytes: int,
        too_large: Callable[[], ModelyardError] | None,
    ) -> None:
        self.tmp_dir = tmp_dir
        self.max_bytes = max_bytes
        self.too_large = too_large
        self.file_field = file_field
        self.allowed_fields = allowed_fields
        self.max_field_bytes = max_field_bytes
        self.max_fields_bytes = max_fields_bytes
        self.events: list[tuple[str, bytes]] = []
        self.fields: dict[str, str] = {}
        self.fields_bytes = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.part_headers: list[list[tuple[bytes, bytes]]] = []
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.part: _Part | None = None
        self.file: ReceivedFile | None = None
        self.file_path: Path | None = None
        self.file_handle: BinaryIO | None = None
        self.digest = hashlib.sha256()
        self.size = 0
        self.ended = False

    async def receive(self, request: Request) -> MultipartUpload:
        parser = MultipartParser(
            _boundary(request),
            callbacks={
                "on_part_data": lambda data, start, end: self.events.append(
                    ("data", data[start:end])
                ),
                "on_part_end": lambda: self.events.append(("end", b"")),
                "on_header_field": lambda data, start, end: self.header_field.extend(
                    data[start:end]
                ),
                "on_header_value": lambda data, start, end: self.header_value.extend(
                    data[start:end]
                ),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_end": lambda: self.events.append(("done", b"")),
            },
        )
        try:
            async for chunk in request.stream():
                if self.ended:
                    continue  # the epilogue after the closing boundary means nothing
                parser.write(chunk)
                await self._handle_events()
            parser.finalize()
            await self._handle_events()
        except FormParserError as exc:
            raise BadRequest("the multipart body is malformed") from exc
        except ClientDisconnect as exc:
            raise BadRequest("the client disconnected during the upload") from exc
        if not self.ended:
            raise BadRequest("the multipart body ended before its closing boundary")
        if self.file is None:
            raise Unprocessable(f"multipart field {self.file_field!r} is required")
        return MultipartUpload(fields=self.fields, file=self.file)

    def _header_end(self) -> None:
        self.headers.append((bytes(self.header_field).lower(), bytes(self.header_value)))
        self.header_field.clear()
        self.header_value.clear()

    def _headers_finished(self) -> None:
        # Events are handled after the whole chunk is parsed, when later parts may have begun:
        # each part's headers travel in a queue of their own.
        self.part_headers.append(self.headers)
        self.headers = []
        self.events.append(("headers", b""))

    async def _handle_events(self) -> None:
        events, self.events = self.events, []
        pending = bytearray()  # file data of this body chunk: one write, not one per event
        for kind, data in events:
            if kind == "data" and self.file_handle is not None:
                self.size += len(data)
                if self.size > self.max_bytes:
                    if self.too_large is not None:
                        raise self.too_large()
                    raise PayloadTooLarge(f"the uploaded file exceeds {self.max_bytes} bytes")
                self.digest.update(data)
                pending += data
                continue
            if pending:
                await self._write(bytes(pending))
                pending.clear()
            if kind == "headers":
                await self._start_part(self.part_headers.pop(0))
            elif kind == "data":
                self._add_field_data(data)
            elif kind == "end":
                await self._end_part()
            elif kind == "done":
                self.ended = True
        if pending:
            await self._write(bytes(pending))

    async def _start_part(self, raw_headers: list[tuple[bytes, bytes]]) -> None:
        headers = dict(raw_headers)
        disposition, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise BadRequest("a multipart part has no form-data name")
        part = _Part(
            name=_text(name, "field name"),
            filename=options[b"filename"].decode("utf-8", "replace")
            if b"filename" in options
            else None,
            content_type=headers[b"content-type"].decode("latin-1")
            if b"content-type" in headers
            else None,
        )
        if part.name == self.file_field:
            if self.file is not None or self.file_handle is not None:
                raise Unprocessable(f"multipart field {part.name!r} is given more than once")
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-", suffix=".part")
            self.file_path = Path(tmp)
            self.file_handle = os.fdopen(fd, "wb")
        elif part.name not in self.allowed_fields:
            allowed = ", ".join(sorted(self.allowed_fields | {self.file_field}))
            raise Unprocessable(f"unknown multipart field {part.name!r}; allowed: {allowed}")
        elif part.name in self.fields:
            raise Unprocessable(f"multipart field {part.name!r} is given more than once")
        self.part = part

    def _add_field_data(self, data: bytes) -> None:
        if self.part is None:
            raise BadRequest("the multipart body is malformed")
        self.part.data += data
        self.fields_bytes += len(data)
        if len(self.part.data) > self.max_field_bytes:
            raise PayloadTooLarge(
                f"multipart field {self.part.name!r} exceeds {self.max_field_bytes} bytes"
            )
        if self.fields_bytes > self.max_fields_bytes:
            raise PayloadTooLarge(f"the multipart fields exceed {self.max_fields_bytes} bytes")

    async def _end_part(self) -> None:
        part, self.part = self.part, None
        if part is None:
            raise BadRequest("the multipart body is malformed")
        if self.file_handle is not None:
            handle, self.file_handle = self.file_handle, None
            await asyncio.to_thread(handle.close)
            assert self.file_path is not None  # noqa: S101 - set together with file_handle
            self.file = ReceivedFile(
                path=self.file_path,
                size=self.size,
                sha256=self.digest.hexdigest(),
                filename=part.filename,
                content_type=part.content_type,
            )
        else:
            self.fields[part.name] = _text(bytes(part.data), f"field {part.name!r}")

    async def _write(self, data: bytes) -> None:
        assert self.file_handle is not None  # noqa: S101 - only file data is written
        # A blocking write: a slow disk must not stall the other requests.
        await asyncio.to_thread(self.file_handle.write, data)

    def discard(self) -> None:
        """Close and remove the temp file, whatever state the upload stopped in."""
        if self.file_handle is not None:
            with contextlib.suppress(OSError):
                self.file_handle.close()
            self.file_handle = None
        if self.file_path is not None:
            self.file_path.unlink(missing_ok=True)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"multipart {what} is not valid UTF-8") from exc
