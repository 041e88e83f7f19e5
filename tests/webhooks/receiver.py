"""A webhook receiver for tests: a tiny HTTP/1.1 server on loopback that records what it gets
and answers from a script (a status, a redirect, silence, an endless body)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

WAIT_SECONDS = 30.0
ENDLESS_CHUNK = b"x" * 65536
# The endless answer stops here if nobody stops reading it: a bound, never reached when the
# sender caps what it reads.
ENDLESS_LIMIT_BYTES = 1024**3


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """One scripted answer: `status` with `headers` and `body`; or `hang` (never answer); or
    `endless` (a 200 whose body never ends)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False
    endless: bool = False


class Receiver:
    """Answers each request with the next scripted `Reply` (then `default`), recording it."""

    def __init__(self, *, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.tls = tls
        self.port = 0
        self.received: list[Received] = []
        self.replies: deque[Reply] = deque()
        self.default = Reply()
        self.streamed = 0  # bytes of endless bodies written
        self.connections = 0
        self._stop = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait_for(self, count: int) -> list[Received]:
        """Wait until `count` requests have arrived (failing past WAIT_SECONDS, a bound)."""
        async with asyncio.timeout(WAIT_SECONDS), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return self.received

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            async with self._arrived:
                self.received.append(Received(method, path, headers, body))
                self._arrived.notify_all()
            reply = self.replies.popleft() if self.replies else self.default
            await self._answer(reply, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reply: Reply, writer: asyncio.StreamWriter) -> None:
        if reply.hang:
            await self._stop.wait()
            return
        if reply.endless:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n"
            )
            while self.streamed < ENDLESS_LIMIT_BYTES:
                writer.write(ENDLESS_CHUNK)
                await writer.drain()  # raises once the reader has closed the connection
                self.streamed += len(ENDLESS_CHUNK)
            return
        extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
        writer.write(
            f"HTTP/1.1 {reply.status} X\r\ncontent-length: {len(reply.body)}\r\n"
            f"connection: close\r\n{extra}\r\n".encode()
            + reply.body
        )
        await writer.drain()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Check a Standard Webhooks signature as a receiver would, with the standard library."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(expected, signature.removeprefix("v1,"))
        for signature in headers["webhook-signature"].split()
        if signature.startswith("v1,")
    )
