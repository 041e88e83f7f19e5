"""The prediction fast path: predict requests answered from memory, in front of FastAPI.

Under load, FastAPI's routing, middleware and dependency solving cost more than the whole
prediction of a small model (bench/README.md has the profile). A predict request whose
credential, version resolution and loaded model are all in this process's caches is answered
here instead, by the same code the routes run once they have resolved (`router.answer`,
`v2.answer`): the same validation, prediction log, metrics, rate limit and errors.

Everything else goes to FastAPI untouched: a query string, a cache miss (the first request of a
credential or a model, one after a revocation or a promotion), a request without credentials.
FastAPI then fills the caches, so the next request takes this path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.auth.deps import Caller
from modelyard.errors import ModelyardError, error_response
from modelyard.predictions import oip, router, v2
from modelyard.predictions.service import Target, target_key
from modelyard.state import AppState

NATIVE_PREFIX = "/api/v1/predict/"
V2_PREFIX = "/v2/models/"
INFER_SUFFIX = "/infer"
VERSIONS = "/versions/"
# The routes' templates, as the metrics and the access log name them.
NATIVE_ROUTE = "/api/v1/predict/{model}"
V2_ROUTE = "/v2/models/{name}/infer"
V2_VERSION_ROUTE = "/v2/models/{name}/versions/{version}/infer"
ROUTES = (NATIVE_ROUTE, V2_ROUTE, V2_VERSION_ROUTE)


class PredictFastPath:
    """Answer cached predict requests directly; pass every other request to `app`."""

    def __init__(self, app: ASGIApp, *, routes: Mapping[str, Any]) -> None:
        self.app = app
        if missing := set(ROUTES) - set(routes):
            raise ValueError(f"the fast path needs the routes {sorted(missing)}")
        # The FastAPI routes taken over, set as `scope["route"]` as routing would.
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["query_string"]
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        match = _match(path)
        state: AppState | None = getattr(scope["app"].state, "modelyard", None)
        if match is None or state is None:
            await self.app(scope, receive, send)
            return
        route, name, version = match
        api_key = authorization = header_length = None
        for key, value in scope["headers"]:
            if key == b"x-api-key":
                api_key = api_key if api_key is not None else value.decode("latin-1")
            elif key == b"authorization":
                authorization = (
                    authorization if authorization is not None else value.decode("latin-1")
                )
            elif key == b"inference-header-content-length":
                header_length = (
                    header_length if header_length is not None else value.decode("latin-1")
                )
        credential = _credential(api_key, authorization)
        caller = state.caller_cache.get(credential) if credential else None
        if caller is None:
            await self.app(scope, receive, send)
            return
        target = state.target_cache.get(target_key(caller.user.id, name, version=version))
        if target is None or state.predictor.cache.peek(target.version_id) is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.routes[route]
        try:
            response = await _answer(state, route, target, caller, name, receive, header_length)
        except (ModelyardError, HTTPException) as exc:
            response = error_response(exc, path)
        await response(scope, receive, send)


def _match(path: str) -> tuple[str, str, int | None] | None:
    """Return (route, model name, version) of a predict path, or None for any other path."""
    if path.startswith(NATIVE_PREFIX):
        name = path[len(NATIVE_PREFIX) :]
        if name and "/" not in name:
            return NATIVE_ROUTE, name, None
        return None
    if not (path.startswith(V2_PREFIX) and path.endswith(INFER_SUFFIX)):
        return None
    rest = path[len(V2_PREFIX) : -len(INFER_SUFFIX)]
    if not rest:
        return None
    if "/" not in rest:
        return V2_ROUTE, rest, None
    name, sep, raw = rest.partition(VERSIONS)
    if not sep or not name or "/" in name or "/" in raw:
        return None
    try:
        return V2_VERSION_ROUTE, name, v2.version_number(raw)
    except oip.OIPError:
        return None  # the route answers the protocol's error


def _credential(api_key: str | None, authorization: str | None) -> str | None:
    """The credential as `auth.deps.current_caller` keys its cache: the API key header first,
    else an `Authorization: Bearer` value (a token or an API key)."""
    if api_key:
        return api_key
    if authorization:
        scheme, _, param = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return param.strip() or None
    return None


async def _answer(
    state: AppState,
    route: str,
    target: Target,
    caller: Caller,
    name: str,
    receive: Receive,
    header_length: str | None,
) -> Response:
    await router.admit(state, caller)
    body = await _read_body(receive)
    if route == NATIVE_ROUTE:
        return await router.answer(state, caller, target, body)
    return await v2.answer(state, caller, target, name, body, header_length)


async def _read_body(receive: Receive) -> bytes:
    """Read the whole request body (the edge middleware's receive enforces the size limit).

    Raises:
        ClientDisconnect: the client went away first.
    """
    chunks = []
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
