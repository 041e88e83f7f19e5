"""`GET /metrics`: admins and the scrape token only; the series the operators rely on."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.app import create_app
from tests.support.factories import Account, lifespan, make_account, make_version
from tests.support.settings import make_settings

SCRAPE_TOKEN = "scrape-token-for-tests-0123456789"


async def test_metrics_are_for_admins_only(
    client: httpx.AsyncClient, user: Account, admin: Account
) -> None:
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers=user.headers)).status_code == 403
    response = await client.get("/metrics", headers=admin.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")


async def test_metrics_count_requests_predictions_and_the_cache(
    client: httpx.AsyncClient, user: Account, admin: Account, iris_skops: Path
) -> None:
    version = await make_version(client, user, iris_skops)
    for _ in range(3):
        answer = await client.post(
            "/api/v1/predict/iris", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}, headers=user.headers
        )
        assert answer.status_code == 200
    refused = await client.post(
        "/api/v1/predict/iris", json={"inputs": [[1.0]]}, headers=user.headers
    )
    assert refused.status_code == 422
    await client.get("/no/such/route/abc123")

    text = (await client.get("/metrics", headers=admin.headers)).text
    model = version["model_id"]
    assert (
        f'modelyard_predictions_total{{model_id="{model}",protocol="rest",status="success",'
        'version="1"} 3.0' in text
    )
    assert (
        f'modelyard_predictions_total{{model_id="{model}",protocol="rest",status="error",'
        'version="1"} 1.0' in text
    )
    assert (
        'modelyard_http_requests_total{method="POST",route="/api/v1/predict/{model}",'
        'status="200"} 3.0' in text
    )
    assert "modelyard_model_cache_misses_total 1.0" in text
    assert "modelyard_model_cache_hits_total 3.0" in text
    assert 'modelyard_inference_duration_seconds_count{framework="sklearn"}' in text
    assert "modelyard_prediction_log_queue_depth" in text
    # Raw paths never become labels: an unknown route counts as "unmatched".
    assert "abc123" not in text
    assert 'route="unmatched"' in text


async def test_the_scrape_token_reads_metrics_without_an_account(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    app = create_app(make_settings(tmp_path, database_url, metrics_token=SCRAPE_TOKEN))
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            ok = await c.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
            assert ok.status_code == 200
            assert "modelyard_http_requests_total" in ok.text
            wrong = await c.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
            assert wrong.status_code == 401
            account = await make_account(c)
            assert (await c.get("/metrics", headers=account.headers)).status_code == 403
