"""`/docs` works offline: Swagger UI comes from the installed package, never from a CDN."""

from __future__ import annotations

import re

import httpx


async def test_docs_page_loads_its_assets_from_the_app(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets
    assert all(a.startswith("/static/swagger-ui/") for a in assets), assets
    for asset in assets:
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert served.content


async def test_docs_oauth2_redirect_page_is_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs/oauth2-redirect")
    assert page.status_code == 200
    assert "oauth2" in page.text.lower()


async def test_root_is_the_dashboard(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/sign-in")


async def test_redoc_is_not_offered(client: httpx.AsyncClient) -> None:
    assert (await client.get("/redoc")).status_code == 404
