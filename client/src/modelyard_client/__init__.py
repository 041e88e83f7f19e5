"""Modelyard's Python SDK: `Client` and `AsyncClient` for a Modelyard registry and server."""

__version__ = "0.1.0"

from modelyard_client.aio import AsyncClient
from modelyard_client.errors import (
    ApiError,
    ConfigurationError,
    ConnectionFailed,
    InvalidInput,
    ModelyardClientError,
)
from modelyard_client.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ConfigurationError",
    "ConnectionFailed",
    "InvalidInput",
    "ModelyardClientError",
    "__version__",
]
