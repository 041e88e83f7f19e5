"""The ModelyardError family and its rendering as RFC 9457 problem+json."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from starlette.responses import Response

# FastAPI, SQLAlchemy and Starlette's responses are imported where they are used: the upload
# probe process raises these errors too (formats, loader), and needs none of them (~45 MiB).

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://modelyard.dev/problems/"
DEPENDENCY_RETRY_AFTER_SECONDS = 5


class ModelyardError(Exception):
    """A failure whose message is safe to show to the client."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    type: ClassVar[str] = "internal-error"

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})


class BadRequest(ModelyardError):
    status, title, type = 400, "Bad Request", "bad-request"


class Unauthorized(ModelyardError):
    status, title, type = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str = "not authenticated") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ModelyardError):
    status, title, type = 403, "Forbidden", "forbidden"


class NotFound(ModelyardError):
    status, title, type = 404, "Not Found", "not-found"


class Conflict(ModelyardError):
    status, title, type = 409, "Conflict", "conflict"


class PayloadTooLarge(ModelyardError):
    status, title, type = 413, "Content Too Large", "payload-too-large"


class UnsupportedMediaType(ModelyardError):
    status, title, type = 415, "Unsupported Media Type", "unsupported-media-type"


class Unprocessable(ModelyardError):
    status, title, type = 422, "Unprocessable Content", "unprocessable"


class RateLimited(ModelyardError):
    status, title, type = 429, "Too Many Requests", "rate-limited"

    def __init__(self, detail: str, *, retry_after_seconds: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_seconds))})


class ServiceUnavailable(ModelyardError):
    status, title, type = 503, "Service Unavailable", "service-unavailable"

    def __init__(self, detail: str, *, retry_after_seconds: int = DEPENDENCY_RETRY_AFTER_SECONDS):
        super().__init__(detail, headers={"Retry-After": str(retry_after_seconds)})


class BodyTooLarge(StarletteHTTPException):
    """Raised from the request's receive channel when the body passes its limit.

    An HTTPException on purpose: FastAPI re-raises those from body parsing unchanged (any other
    exception there becomes a 400), so the 413 reaches the handlers below.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    path: str | None = None,
) -> Response:
    """Render one problem+json response (or, under `/v2`, the protocol's `{"error": ...}`)."""
    if path is not None and is_v2_path(path):
        return v2_error_response(status, _v2_message(detail, extra), headers=headers)
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + type_ if type_ else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if extra:
        body.update(extra)
    from starlette.responses import Response

    return Response(orjson.dumps(body), status, headers=headers, media_type=PROBLEM_JSON)


V2_PREFIX = "/v2"


def is_v2_path(path: str) -> bool:
    """Tell whether `path` belongs to the Open Inference Protocol, whose errors differ."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def v2_error_response(
    status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> Response:
    """Render an Open Inference Protocol error: `{"error": "..."}`."""
    from starlette.responses import Response

    return Response(
        orjson.dumps({"error": message}), status, headers=headers, media_type="application/json"
    )


def _v2_message(detail: str, extra: Mapping[str, Any] | None) -> str:
    errors = (extra or {}).get("errors")
    if not errors:
        return detail
    parts = [".".join(str(p) for p in e.get("loc", ())) + ": " + str(e.get("msg")) for e in errors]
    return f"{detail}: " + "; ".join(parts)


# PostgreSQL errors that say "not now" about the server, never "bad input": 08 connection,
# 53 insufficient resources (disk, memory, too many connections), 55 object not in prerequisite
# state (55P03 lock not available, 55006 object in use), 57P operator intervention (admin or
# crash shutdown, cannot connect now), 57014 a statement cancelled (statement_timeout), 25006 a
# write reaching a read-only server (a standby after a failover).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "55", "57P")
_UNAVAILABLE_SQLSTATES = frozenset({"57014", "25006"})


def is_dependency_down(exc: BaseException) -> bool:
    """Tell whether an exception means the database (or another service) cannot be reached."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if isinstance(sqlstate, str) and (
            sqlstate.startswith(_UNAVAILABLE_SQLSTATE_CLASSES) or sqlstate in _UNAVAILABLE_SQLSTATES
        ):
            return True
        return exc.connection_invalidated or isinstance(
            exc, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    # asyncpg surfaces a restarting server as raw ConnectionErrors, or as a bare OSError when
    # every address refused; a full pool as TimeoutError. A missing file is not an outage.
    return isinstance(exc, sa_exc.TimeoutError | ConnectionError | TimeoutError) or (
        type(exc) is OSError
    )


def error_response(exc: Exception, path: str) -> Response | None:
    """Render an exception the way the app's handlers do: our errors, HTTP exceptions, text the
    database cannot store, an unreachable dependency. None for anything else (a bug: the edge
    middleware logs it and answers a generic 500)."""
    if isinstance(exc, ModelyardError):
        return problem_response(
            exc.status, exc.detail, title=exc.title, type_=exc.type, headers=exc.headers, path=path
        )
    if isinstance(exc, StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404:
            detail = "no such route"
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers.setdefault("WWW-Authenticate", "Bearer")
        return problem_response(exc.status_code, detail, headers=headers, path=path)
    if is_unstorable_text(exc):
        return problem_response(
            422,
            "the request contains a character that cannot be stored (NUL)",
            title="Unprocessable Content",
            type_="unstorable-text",
            path=path,
        )
    if is_dependency_down(exc):
        log.warning("dependency_unavailable", extra={"error": type(exc).__name__, "path": path})
        return problem_response(
            503,
            "a service Modelyard depends on is unavailable; try again shortly",
            type_="service-unavailable",
            headers={"Retry-After": str(DEPENDENCY_RETRY_AFTER_SECONDS)},
            path=path,
        )
    return None


async def _error(request: Request, exc: Exception) -> Response:
    response = error_response(exc, request.url.path)
    if response is None:
        raise exc
    return response


async def _validation_error(request: Request, exc: Exception) -> Response:
    from fastapi.exceptions import RequestValidationError

    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this class only
    # Only loc, msg and type: pydantic's `input` would echo passwords and secrets back.
    errors = [
        {"loc": list(e.get("loc", ())), "msg": _message(e), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return problem_response(
        422,
        "the request is not valid",
        title="Unprocessable Content",
        type_="validation-error",
        extra={"errors": errors},
        path=request.url.path,
    )


def _message(error: Mapping[str, Any]) -> str:
    reason = (error.get("ctx") or {}).get("error")
    if error.get("type") == "json_invalid" and isinstance(reason, str):
        # The parser's reason says what is wrong: NaN, Infinity, a number that overflows.
        return f"invalid JSON: {reason}"
    return str(error.get("msg", ""))


# PostgreSQL text and JSONB cannot hold NUL (or a `\u0000` escape): character_not_in_repertoire,
# untranslatable_character. Bad input, not a server fault; SQLite stores it either way.
_UNSTORABLE_TEXT_SQLSTATES = frozenset({"22021", "22P05"})


def is_unstorable_text(exc: BaseException) -> bool:
    """Tell whether the database refused a value because of a character it cannot store."""
    from sqlalchemy import exc as sa_exc

    return (
        isinstance(exc, sa_exc.DBAPIError)
        and getattr(exc.orig, "sqlstate", None) in _UNSTORABLE_TEXT_SQLSTATES
    )


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    """405, with `Allow` naming every method of the path: Starlette names only those of the
    first route of that path it tried (`GET` where `GET, PATCH, DELETE` are served)."""
    from starlette.routing import Match

    def served(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes)

    allowed = [method for method in _METHODS if served(method)]
    return problem_response(
        405, "Method Not Allowed", headers={"Allow": ", ".join(allowed)}, path=request.url.path
    )


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def install_error_handlers(app: FastAPI) -> None:
    """Render every error the app raises as problem+json (unexpected ones: see the middleware)."""
    from fastapi.exceptions import RequestValidationError
    from sqlalchemy import exc as sa_exc

    app.add_exception_handler(ModelyardError, _error)
    app.add_exception_handler(StarletteHTTPException, _error)
    app.add_exception_handler(405, _method_not_allowed)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(sa_exc.DBAPIError, _error)
    app.add_exception_handler(sa_exc.TimeoutError, _error)
    app.add_exception_handler(OSError, _error)


# --- the errors in the OpenAPI document ------------------------------------------------------

_PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An error, as RFC 9457 problem details; some carry more members (`errors`).",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}
_V2_ERROR_SCHEMA: dict[str, Any] = {
    "title": "InferenceError",
    "description": "An error of the Open Inference Protocol.",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}


def document_errors(app: FastAPI) -> None:
    """Have every operation of `app`'s OpenAPI document state its errors as they are sent.

    FastAPI documents a 422 of its own shape and no other error; ours are problem+json (under
    `/v2`, the protocol's `{"error": ...}`), for any status a route may answer (401, 403, 404,
    409, 413, 429, 503, ...): each operation gets a `default` response of that shape, and its
    declared error responses without a body of their own get it too.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Problem"] = _PROBLEM_SCHEMA
        components["InferenceError"] = _V2_ERROR_SCHEMA
        for path, item in schema.get("paths", {}).items():
            v2 = is_v2_path(path)
            media = "application/json" if v2 else PROBLEM_JSON
            ref = "#/components/schemas/" + ("InferenceError" if v2 else "Problem")
            content = {media: {"schema": {"$ref": ref}}}
            for operation in item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                for code, response in responses.items():
                    if code[0] in "45" and (code == "422" or "content" not in response):
                        response["content"] = content
                responses.setdefault("default", {"description": "An error", "content": content})
        # FastAPI's own validation error shapes, now referenced by no response.
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
