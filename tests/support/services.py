"""What a test does when a service it needs (PostgreSQL, Redis, Chromium…) is absent."""

from __future__ import annotations

import os

import pytest


def service_missing(what: str, address: str, exc: BaseException) -> None:
    """Skip a test whose service is absent; in CI a missing service is a failure."""
    message = f"{what} not reachable at {address}: {type(exc).__name__}: {exc}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
