"""Modelyard's Python SDK: `Client` and `AsyncClient` for a Modelyard registry and server."""

__version__ = "0.1.0"

from modelyard_client.aio import AsyncClient
from modelyard_client.errors import (
    ApiError,
    ConfigurationError,
    ConnectionFailed,
    ModelyardClientError,
)
from modelyard_client.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ConfigurationError",
    "ConnectionFailed",
    "ModelyardClientError",
    "__version__",
]
