"""The prediction fast path: predict requests answered from memory, in front of FastAPI.

Under load, FastAPI's routing, middleware and dependency solving cost more than the whole
prediction of a small model (bench/README.md has the profile). A predict request whose
credential, version resolution and loaded model are all in this process's caches is answered
here instead, by the same pipeline the routes run once they have resolved (`pipeline`: route →
admit → answer): the same validation, prediction log, metrics, rate limit and errors. A model's
traffic policy comes cached with its resolution: the split, the routing key and the shadow copy
are honoured here exactly as in the routes.

Everything else goes to FastAPI untouched: a query string, a cache miss (the first request of a
credential or a model, one after a revocation or a promotion), a request without credentials,
an API key that may not predict this model (the route's scope check refuses it).
FastAPI then fills the caches, so the next request takes this path.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping
from typing import Any, Protocol

from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.auth.deps import CredentialParts, check_credential, credentials
from modelyard.auth.scopes import Scope as KeyScope
from modelyard.auth.service import Caller
from modelyard.changes.hotcache import EpochCache
from modelyard.db.tables import User
from modelyard.errors import error_response
from modelyard.predictions import oip, pipeline
from modelyard.predictions.predictor import Predictor
from modelyard.predictions.rest import predict_rest
from modelyard.predictions.targets import Target, resolve_fresh, target_key
from modelyard.predictions.traffic.routing import ROUTING_KEY_HEADER
from modelyard.predictions.v2 import predict_v2

NATIVE_PREFIX = "/api/v1/predict/"
V2_PREFIX = "/v2/models/"
INFER_SUFFIX = "/infer"
VERSIONS = "/versions/"
# The routes' templates, as the metrics and the access log name them.
NATIVE_ROUTE = "/api/v1/predict/{model}"
V2_ROUTE = "/v2/models/{name}/infer"
V2_VERSION_ROUTE = "/v2/models/{name}/versions/{version}/infer"
ROUTES = (NATIVE_ROUTE, V2_ROUTE, V2_VERSION_ROUTE)


class FastPathParts(CredentialParts, Protocol):
    """The components the fast path reads off its app (the app state has them): what checks a
    credential, the cache of resolutions, the predictor and the database sessions."""

    @property
    def target_cache(self) -> EpochCache[Hashable, Target]: ...

    @property
    def predictor(self) -> Predictor: ...

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]: ...


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
        state: FastPathParts | None = getattr(scope["app"].state, "modelyard", None)
        if match is None or state is None:
            await self.app(scope, receive, send)
            return
        route, name, version = match
        request = Request(scope, receive)
        headers = request.headers
        # As FastAPI's security schemes read them (`auth.deps.bearer_scheme`, `api_key_scheme`).
        scheme, token = get_authorization_scheme_param(headers.get("authorization"))
        api_key, bearer = credentials(
            headers.get("x-api-key"), token if scheme.lower() == "bearer" else None
        )
        credential = api_key or bearer
        found = state.caller_cache.lookup(credential) if credential is not None else None
        if credential is None or found is None:
            await self.app(scope, receive, send)
            return
        caller, due = found
        if not caller.allows(KeyScope.PREDICT, model=name):
            # An API key without `predict`, or limited to other models (or naming its model by
            # UUID): the route refuses it (or looks the UUID up), exactly as it always would.
            await self.app(scope, receive, send)
            return
        if due:  # past its lifetime: still served (for its grace) while it is checked again
            state.caller_cache.refresh(
                credential, functools.partial(_check, state, api_key, bearer)
            )
        key = target_key(caller.user.id, name, version=version)
        resolved = state.target_cache.lookup(key)
        if resolved is None:
            await self.app(scope, receive, send)
            return
        target, due = resolved
        # The policy came cached with the target: the split costs no database round trip.
        routed = pipeline.route(state.predictor, target, headers.get(ROUTING_KEY_HEADER))
        if state.predictor.cache.peek(routed.target.version_id) is None:
            # The route draws again (the same way for a routing key), then loads the model.
            await self.app(scope, receive, send)
            return
        if due:
            state.target_cache.refresh(
                key, functools.partial(_resolve, state, caller.user, name, version)
            )
        scope["route"] = self.routes[route]
        codec: pipeline.Codec = predict_rest
        if route != NATIVE_ROUTE:
            codec = functools.partial(
                predict_v2, name=name, header_length=headers.get(oip.HEADER_LENGTH)
            )
        response: Response
        try:
            answer = await pipeline.answer(
                state.predictor, routed, caller=caller, body=request.body, codec=codec
            )
            response = Response(answer.body, headers=answer.headers, background=answer.background)
        except Exception as exc:
            # The routes' exception handlers, for what they handle; anything else is a bug
            # (or a client gone), which the edge middleware deals with.
            error = error_response(exc, path)
            if error is None:
                raise
            response = error
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
        return V2_VERSION_ROUTE, name, oip.version_number(raw)
    except oip.OIPError:
        return None  # the route answers the protocol's error


async def _check(
    state: FastPathParts, api_key: str | None, bearer: str | None
) -> tuple[Caller, float | None]:
    async with state.sessions() as db:
        return await check_credential(state, db, api_key, bearer)


async def _resolve(
    state: FastPathParts, user: User, name: str, version: int | None
) -> tuple[Target, float | None]:
    async with state.sessions() as db:
        return await resolve_fresh(db, user, name, state.outage_cache, version=version)
