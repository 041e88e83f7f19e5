"""What the current request is: its id, where it came from, and who is calling.

The edge middleware starts a `RequestContext` for every HTTP request; authentication fills in
the caller. The audit log reads it when a service records an action, so that services need not
carry client addresses and user agents through every signature.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

USER_AGENT_MAX = 256


@dataclass(slots=True)
class RequestContext:
    request_id: str
    scope: MutableMapping[str, Any]
    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None

    @property
    def client_address(self) -> str | None:
        """The address the request came from, as the server saw it (behind a proxy, the one
        the proxy headers name when the server trusts them)."""
        client = self.scope.get("client")
        return str(client[0]) if client else None

    @property
    def user_agent(self) -> str | None:
        for name, value in self.scope.get("headers", ()):
            if name == b"user-agent":
                return str(value.decode("latin-1")[:USER_AGENT_MAX])
        return None


request_context: ContextVar[RequestContext | None] = ContextVar("request_context", default=None)


def current() -> RequestContext | None:
    """Return the context of the request being served, None outside one (the CLI, a task)."""
    return request_context.get()


# Set once the server begins to shut down: answers that could last (event streams) end
# themselves, so that the process is not kept waiting for them.
draining = threading.Event()


def set_caller(user_id: uuid.UUID, api_key_id: uuid.UUID | None) -> None:
    """Note who the request's caller is, once its credential has been checked."""
    context = request_context.get()
    if context is not None:
        context.user_id = user_id
        context.api_key_id = api_key_id
