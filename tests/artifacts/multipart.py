"""Hand-built multipart bodies, so tests can send what no well-behaved client would."""

from __future__ import annotations

from collections.abc import AsyncIterator

BOUNDARY = "modelyard-test-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, data: bytes, *, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if filename is not None:
        head += "Content-Type: application/octet-stream\r\n"
    return head.encode() + b"\r\n" + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def in_chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    """Yield `data` a piece at a time: a streamed body without Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
