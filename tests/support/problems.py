"""Assertions on problem+json answers, shared by the HTTP tests."""

from __future__ import annotations

from typing import Any

import httpx


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Check that `response` is a problem+json document with `status`; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def assert_unauthorized(response: httpx.Response) -> None:
    """Check a 401 problem that tells the client how to authenticate."""
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
