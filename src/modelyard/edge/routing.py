"""The route class of every Modelyard router: request JSON parsed strictly, by orjson."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response


class StrictJsonRequest(Request):
    """A request whose JSON body refuses `NaN`, `Infinity` and numbers that overflow a double.

    The standard library parser accepts all three; they then pass any `Any`-typed field and crash
    response encoding. orjson refuses them with a JSONDecodeError, which FastAPI answers with 422.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict_handler


def make_router(**kwargs: Any) -> APIRouter:
    """Return an APIRouter whose routes parse JSON strictly."""
    return APIRouter(route_class=StrictJsonRoute, **kwargs)
