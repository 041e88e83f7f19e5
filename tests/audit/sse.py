"""Event streams over real HTTP: an app already in its lifespan served by uvicorn on loopback in
the test's own event loop, and Server-Sent Events read from it as a client reads them.

(httpx's ASGI transport answers only once the body is complete, so a stream needs a server.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import uvicorn
from fastapi import FastAPI

# A bound, not a measurement: what has not happened by then never will.
WAIT_SECONDS = 20.0
EVENTS = "/api/v1/events"


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The test runner's signal handlers stay in place.
        yield


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Serve `app` (its lifespan already running) over HTTP on loopback; yield a client of it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="off", log_config=None, ws="none", timeout_graceful_shutdown=5
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=WAIT_SECONDS
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await task
        sock.close()


class EventStream:
    """The messages of one open stream, as an EventSource parses them."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def message(self) -> dict[str, Any] | None:
        """The next message (fields by name; `data` parsed), or None once the stream ended."""
        fields: dict[str, Any] = {}
        async for line in self._lines:
            if not line:
                if fields:
                    if "data" in fields:
                        fields["data"] = orjson.loads(fields["data"])
                    return fields
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        return None

    async def event(self, name: str | None = None) -> dict[str, Any]:
        """The next event (not a retry hint or a keep-alive comment), or the next one called
        `name`; fails if none comes."""
        async with asyncio.timeout(WAIT_SECONDS):
            while True:
                message = await self.message()
                assert message is not None, "the stream ended"
                if "event" in message and name in (None, message["event"]):
                    return message

    async def end(self) -> list[dict[str, Any]]:
        """Read until the server ends the stream; return the events that came meanwhile (fails
        if it is still open after WAIT_SECONDS)."""
        seen = []
        async with asyncio.timeout(WAIT_SECONDS):
            while (message := await self.message()) is not None:
                if "event" in message:
                    seen.append(message)
        return seen


@asynccontextmanager
async def opened(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None, *, path: str = EVENTS
) -> AsyncIterator[EventStream]:
    """Open a stream; once this yields, the server holds it (its first message has come)."""
    async with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        stream = EventStream(response)
        assert await stream.message() == {"retry": "2000"}
        yield stream
