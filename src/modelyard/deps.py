"""How a route reaches one of its process's components, without the composition root.

`modelyard.composition` builds the components and sets them on the app; each package names the
ones of its own types beside them (`EventsDep` in `changes/deps.py`, `StoreDep` in
`artifacts/deps.py`, ...) with `component`, so that a route takes the one it needs and no
package imports the root (tests/test_layers.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends
from redis.asyncio import Redis
from starlette.requests import HTTPConnection

from modelyard.config import Settings


def component(name: str) -> Callable[[HTTPConnection], Awaitable[Any]]:
    """Return the dependency that hands a route its app's component `name`."""

    # Async: FastAPI runs a sync dependency in its thread pool.
    async def dependency(conn: HTTPConnection) -> Any:
        return getattr(conn.app.state.modelyard, name)

    dependency.__name__ = dependency.__qualname__ = f"get_{name}"
    return dependency


SettingsDep = Annotated[Settings, Depends(component("settings"))]
# The process's Redis client (None: no Redis configured).
RedisDep = Annotated[Redis | None, Depends(component("redis"))]
