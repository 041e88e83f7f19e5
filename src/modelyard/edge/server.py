"""The HTTP/1.1 protocol `modelyard serve` runs: uvicorn's httptools one, with a bounded edge.

Uvicorn's httptools protocol (the fast one) buffers a request head of any size (a 64 MiB header
cost 4.7 s of CPU and 190 MiB), arms no timer on a new connection nor while a head or a body
trickles in, so idle and half-sent requests stayed open for good. `EdgeHttpProtocol` adds:

- a head size limit: bytes are fed to the parser only up to the budget, so an oversized head
  answers 431 and the connection closes before the rest is ever buffered;
- a head timeout from a request's first bytes to the end of its headers (408);
- a body timeout: the longest the body may stall while the app waits for it (408);
- an idle timeout from the moment a connection opens, not only after a first response;
- uvicorn's concurrency limit answered as problem+json with `Retry-After`.

Timers are armed only when a head or body is still incomplete after a read: a request that
arrives whole in one read (the fast path's case) costs two attribute checks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Self

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from modelyard.config import Settings
from modelyard.edge import context
from modelyard.errors import PROBLEM_BASE, PROBLEM_JSON

log = logging.getLogger("modelyard.access")

OVERLOAD_RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class EdgeLimits:
    """The bounds one connection lives under (see the `# HTTP edge` settings)."""

    max_header_bytes: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    idle_timeout_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout_seconds=settings.header_timeout_seconds,
            body_timeout_seconds=settings.body_timeout_seconds,
            idle_timeout_seconds=settings.idle_timeout_seconds,
        )


@dataclass(frozen=True)
class EdgeProtocolFactory:
    """What `uvicorn.run(http=...)` calls per connection."""

    limits: EdgeLimits

    def __call__(
        self,
        *,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> EdgeHttpProtocol:
        return EdgeHttpProtocol(config, server_state, app_state, _loop, limits=self.limits)


def problem_bytes(
    status: int, detail: str, extra_headers: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    """Return a whole HTTP/1.1 problem+json response that closes the connection."""
    phrase = HTTPStatus(status).phrase
    slug = phrase.lower().replace(" ", "-")
    body = orjson.dumps(
        {"type": PROBLEM_BASE + slug, "title": phrase, "status": status, "detail": detail}
    )
    lines = [f"HTTP/1.1 {status} {phrase}".encode()]
    lines += [name + b": " + value for name, value in extra_headers]
    lines += [
        b"content-type: " + PROBLEM_JSON.encode(),
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def _overloaded(scope: Any, receive: Any, send: Any) -> None:
    """Answer a request past the concurrency limit (uvicorn's own answer is plain text)."""
    body = orjson.dumps(
        {
            "type": PROBLEM_BASE + "service-unavailable",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "the server is at its concurrency limit; try again shortly",
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(OVERLOAD_RETRY_AFTER_SECONDS).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class EdgeHttpProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol with a head size limit and head, body and idle timeouts."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: EdgeLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        # Uvicorn types it int; call_later takes a float just as well.
        self.timeout_keep_alive = limits.idle_timeout_seconds  # type: ignore[assignment]
        self._in_head = True  # the next bytes belong to a request head
        self._head_started = False  # ... and some of them have arrived
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_at = 0.0
        self._refused = False

    # Narrower than asyncio's BaseTransport, as in uvicorn's own signature.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Uvicorn arms its keep-alive timer only after a response: a connection that never
        # sends anything would stay open for good.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def shutdown(self) -> None:
        # Uvicorn calls this on every connection when the server begins to shut down.
        context.draining.set()
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            budget = self.limits.max_header_bytes - self._head_bytes
            if len(data) > budget:
                # Feed only what the budget allows: the head must end inside it. The parser
                # never buffers the rest.
                self._head_bytes += budget
                super().data_received(data[:budget])
                if self._in_head:
                    if not self.transport.is_closing():
                        self._refuse(
                            431, f"the request head exceeds {self.limits.max_header_bytes} bytes"
                        )
                    return
                self.data_received(data[budget:])
                return
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head:
            if self._head_started and self._head_timer is None:
                self._head_timer = self.loop.call_later(
                    self.limits.header_timeout_seconds, self._head_timed_out
                )
        elif self._body_timer is None and self._waiting_for_body():
            self._body_at = self.loop.time()
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout_seconds, self._check_body
            )

    # Parser callbacks

    def on_message_begin(self) -> None:
        self._head_started = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_started = False
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._body_timer is not None:
            self._body_at = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._cancel_body_timer()
        super().on_message_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if app is service_unavailable:
            app = _overloaded
        super()._start_asgi_task(cycle, app)

    # Timers

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, "the request head was not received in time")

    def _waiting_for_body(self) -> bool:
        cycle: RequestResponseCycle | None = self.cycle
        return cycle is not None and cycle.more_body and not cycle.response_complete

    def _check_body(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or not self._waiting_for_body():
            return
        now = self.loop.time()
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:
            # The app is not reading yet (busy, or not asked for the body): not the client's
            # fault, so the stall counts from when it asks.
            self._body_at = now
        stalled = now - self._body_at
        if stalled < self.limits.body_timeout_seconds:
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout_seconds - stalled, self._check_body
            )
            return
        self._refuse(408, "the request body stalled")

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` (if no other response is under way) and close the connection."""
        self._refused = True
        self._cancel_head_timer()
        self._cancel_body_timer()
        cycle: RequestResponseCycle | None = self.cycle
        in_flight = cycle is not None and not cycle.response_complete
        if cycle is not None and in_flight:
            # The app sees the client gone; whatever it sends from now on is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        if not in_flight or (cycle is not None and not cycle.response_started):
            headers = list(self.server_state.default_headers)
            self.transport.write(problem_bytes(status, detail, headers))
        log.info("request_refused", extra={"status": status, "detail": detail})
        self.transport.close()
