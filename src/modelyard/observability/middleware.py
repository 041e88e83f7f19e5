"""The HTTP edge: request ids, timing, the access log, body size limits, control characters in
query strings, and unexpected errors.

A pure ASGI middleware (no BaseHTTPMiddleware) so that it costs one function call per request.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterable
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.edge.context import RequestContext, request_context
from modelyard.errors import BodyTooLarge, problem_response
from modelyard.observability.logging import request_id_var
from modelyard.observability.metrics import Metrics

log = logging.getLogger("modelyard.access")
error_log = logging.getLogger("modelyard.errors")

# A client-sent id is echoed only when it cannot inject anything into logs or headers.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Metric labels come from bounded sets: any other method a client invents counts as OTHER.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class EdgeMiddleware:
    """Stamp, time, size-limit and log every HTTP request; turn crashes into a generic 500."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_request_bytes: int,
        max_upload_bytes: int,
        upload_paths: Iterable[str] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.max_upload_bytes = max_upload_bytes
        self.upload_paths = frozenset(upload_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        context_token = request_context.set(RequestContext(request_id, scope))
        status = 500
        response_started = False
        limit = (
            self.max_upload_bytes if scope["path"] in self.upload_paths else self.max_request_bytes
        )

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                elapsed_ms = (time.perf_counter() - started) * 1000
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"x-process-time", f"{elapsed_ms:.2f}".encode()))
                message["headers"] = headers
            await send(message)

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            declared = _content_length(scope)
            query = scope["query_string"]
            # Before any route, so before any query: PostgreSQL refuses NUL in text (after
            # the answer began, for a stream), and no filter means a control character.
            refused = control_character_parameter(query) if query else None
            if declared is not None and declared > limit:
                response = problem_response(
                    413,
                    f"request body exceeds {limit} bytes",
                    type_="payload-too-large",
                    path=scope["path"],
                )
                await response(scope, receive, send_wrapper)
            elif refused is not None:
                await control_character_response(refused, scope["path"])(
                    scope, receive, send_wrapper
                )
            else:
                await self.app(scope, receive_limited, send_wrapper)
        except ClientDisconnect:
            # The client went away mid-request (a load generator stopping, a closed tab): there
            # is nobody to answer and nothing broke.
            status = 499
            log.info("client_disconnected", extra={"path": scope["path"]})
        except Exception:
            # Full traceback to the log only; the client sees a generic problem with the id.
            error_log.exception(
                "unhandled_error", extra={"method": scope["method"], "path": scope["path"]}
            )
            if not response_started:
                response = problem_response(
                    500,
                    f"internal error; quote request id {request_id} when reporting it",
                    path=scope["path"],
                )
                await response(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )
            if self.metrics is not None:
                method = scope["method"] if scope["method"] in _METHODS else "OTHER"
                self.metrics.http_request(route, method, status, elapsed)
            request_id_var.reset(token)
            request_context.reset(context_token)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    # An id to quote, not a secret: the random module spares a system call per request.
    return f"{random.getrandbits(128):032x}"


# What may come before a control character in a query string: a raw one (some clients send
# them), or a percent escape that may decode to one. Anything else needs no decoding.
_MAY_HOLD_CONTROL = re.compile(rb"[\x00-\x1f\x7f-\xff%]")
# Control characters (Unicode category Cc): C0, DEL and C1. Tab, CR and LF included: no name,
# id, action, date or search term of the API holds one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_NAME_IN_ERROR = 64


def control_character_parameter(query_string: bytes) -> str | None:
    """Return the name of the first query parameter whose name or value holds a control
    character, as the app would decode it (Starlette: latin-1, then percent-decoded UTF-8)."""
    if _MAY_HOLD_CONTROL.search(query_string) is None:
        return None
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if _CONTROL.search(name) or _CONTROL.search(value):
            return name
    return None


def control_character_response(name: str, path: str) -> Response:
    """422: a query parameter holds a control character (NUL and the like), refused before
    any route, so before any query. The name is shown escaped."""
    shown = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", name)[:MAX_NAME_IN_ERROR]
    return problem_response(
        422,
        "the request is not valid",
        title="Unprocessable Content",
        type_="validation-error",
        extra={
            "errors": [
                {
                    "loc": ["query", shown],
                    "msg": "control characters (NUL, tab, line breaks, ...) are not allowed",
                    "type": "control_character",
                }
            ]
        },
        path=path,
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
