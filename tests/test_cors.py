"""CORS: browsers on MODELYARD_CORS_ORIGINS may call the API with a bearer token or an API key;
other origins get no CORS headers, and credentials (cookies) are never allowed cross-origin."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import factories
from tests.support.settings import make_settings

ALLOWED = "https://app.example.com"
REFUSED = "https://evil.example.net"
MODELS = "/api/v1/models"
PREDICT = "/api/v1/predict/iris"


def preflight(client: httpx.AsyncClient, origin: str, path: str = MODELS) -> httpx.Request:
    return client.build_request(
        "OPTIONS",
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


async def test_an_allowed_origin_passes_the_preflight_without_credentials(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    settings = make_settings(tmp_path, database_url, cors_origins=[ALLOWED])
    async with factories.serve(settings) as client:
        response = await client.send(preflight(client, ALLOWED))

    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in response.headers
    assert "Origin" in response.headers["vary"]


async def test_a_refused_origin_fails_the_preflight(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    settings = make_settings(tmp_path, database_url, cors_origins=[ALLOWED])
    async with factories.serve(settings) as client:
        response = await client.send(preflight(client, REFUSED))

    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_actual_requests_carry_cors_headers_for_allowed_origins_only(
    tmp_path: Path, database_url: str, engine: AsyncEngine, iris_skops: Path
) -> None:
    settings = make_settings(tmp_path, database_url, cors_origins=[ALLOWED])
    async with factories.serve(settings) as client:
        user = await factories.make_account(client)
        await factories.make_version(client, user, iris_skops)
        listed = await client.get(MODELS, headers={**user.headers, "Origin": ALLOWED})
        foreign = await client.get(MODELS, headers={**user.headers, "Origin": REFUSED})
        # Twice: the first request fills the caches, the second is answered by the fast path.
        predictions = [
            await client.post(
                PREDICT,
                json={"inputs": [[5.1, 3.5, 1.4, 0.2]]},
                headers={**user.headers, "Origin": ALLOWED},
            )
            for _ in range(2)
        ]

    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == ALLOWED
    # Scripts of the allowed origin may read the id to quote in a report.
    assert "x-request-id" in listed.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-credentials" not in listed.headers
    assert foreign.status_code == 200  # answered, but a browser keeps it from the page
    assert "access-control-allow-origin" not in foreign.headers
    for response in predictions:
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == ALLOWED


async def test_a_wildcard_origin_never_allows_credentials(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    settings = make_settings(tmp_path, database_url, cors_origins=["*"])
    async with factories.serve(settings) as client:
        user = await factories.make_account(client)
        passed = await client.send(preflight(client, REFUSED))
        # A browser sending the dashboard's cookie along: still no credentials allowed.
        actual = await client.get(
            MODELS, headers={**user.headers, "Origin": REFUSED, "Cookie": "modelyard_session=x"}
        )

    assert passed.status_code == 200
    assert passed.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in passed.headers
    assert actual.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in actual.headers


async def test_without_configured_origins_no_cors_headers_are_sent(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    settings = make_settings(tmp_path, database_url)
    async with factories.serve(settings) as client:
        user = await factories.make_account(client)
        passed = await client.send(preflight(client, ALLOWED))
        actual = await client.get(MODELS, headers={**user.headers, "Origin": ALLOWED})

    assert passed.status_code in (404, 405)
    assert passed.headers["content-type"] == "application/problem+json"
    assert "access-control-allow-origin" not in passed.headers
    assert actual.status_code == 200
    assert "access-control-allow-origin" not in actual.headers
