"""`X-Forwarded-For` is believed only from MODELYARD_FORWARDED_ALLOW_IPS (default: nobody)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import factories
from tests.support.settings import make_settings
from tests.test_ratelimit import LOGIN


def spoofed_login(client: httpx.AsyncClient) -> httpx.Request:
    """A failed login from a new made-up address and for a new email each time."""
    address = f"203.0.113.{uuid.uuid4().int % 250 + 1}"
    return client.build_request(
        "POST",
        LOGIN,
        json={"email": f"{uuid.uuid4().hex[:12]}@example.com", "password": "wrong-password"},
        headers={"X-Forwarded-For": address},
    )


async def test_forwarded_for_from_a_trusted_proxy_names_the_client(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    # The test transport's peer is 127.0.0.1: here it is the proxy.
    settings = make_settings(
        tmp_path, database_url, auth_rate_limit_per_minute=2, forwarded_allow_ips=["127.0.0.1"]
    )
    async with factories.serve(settings) as client:
        statuses = [(await client.send(spoofed_login(client))).status_code for _ in range(4)]

    assert statuses == [401, 401, 401, 401]


async def test_forwarded_for_is_ignored_by_default(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    settings = make_settings(tmp_path, database_url, auth_rate_limit_per_minute=2)
    async with factories.serve(settings) as client:
        statuses = [(await client.send(spoofed_login(client))).status_code for _ in range(3)]

    assert statuses == [401, 401, 429]
