"""No prediction is lost: across a SIGTERM of a real server, and across a database outage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.app import create_app
from modelyard.db.tables import Prediction
from modelyard.state import AppState
from tests.support.factories import lifespan, make_account, make_version
from tests.support.servers import ServerProcess, environment, running
from tests.support.settings import make_settings
from tests.support.tcpproxy import TcpProxy

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
REPLAY_TIMEOUT_SECONDS = 90


# Two workers: forked by the supervisor, each with its own log writer to flush.
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_loses_no_prediction_and_a_restart_sees_them_all(
    tmp_path: Path, iris_skops: Path, workers: str
) -> None:
    n = 60
    # In a session of its own: if it does not stop, its workers are killed with it.
    server = ServerProcess(
        tmp_path, ("--workers", workers), environment(tmp_path), start_new_session=True
    )
    with running(server):
        credentials = {"email": "ada@example.com", "password": "correct horse battery"}
        # A new connection per request: with two workers, both answer some.
        with httpx.Client(
            base_url=server.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
        ) as client:
            assert client.post("/api/v1/auth/register", json=credentials).status_code == 201
            token = client.post("/api/v1/auth/login", json=credentials).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            with iris_skops.open("rb") as f:
                upload = client.post(
                    "/api/v1/models/upload",
                    data={"name": "iris"},
                    files={"file": f},
                    headers=headers,
                )
            assert upload.status_code == 201, upload.text
            for _ in range(n):
                answer = client.post(
                    "/api/v1/predict/iris", json={"inputs": IRIS_ROWS}, headers=headers
                )
                assert answer.status_code == 200, answer.text
        # Straight after the last answer: the log writer has had no time to flush on its own.
        assert server.stop() == 0

        server.start()  # again: the same port, data folder and log
        with httpx.Client(base_url=server.url, timeout=30) as client:
            token = client.post("/api/v1/auth/login", json=credentials).json()["access_token"]
            page = client.get(
                "/api/v1/predictions",
                params={"limit": 100},
                headers={"Authorization": f"Bearer {token}"},
            ).json()
        assert page["total"] == n
        assert len({p["id"] for p in page["items"]}) == n


@pytest.mark.parametrize("dialect", ["postgresql"])  # the `engine` fixture cleans up after
async def test_database_cut_mid_traffic_keeps_cached_models_answering_and_loses_nothing(
    tmp_path: Path,
    proxied_postgresql_url: str,
    pg_proxy: TcpProxy,
    engine: AsyncEngine,
    iris_skops: Path,
    iris_bytes: bytes,
) -> None:
    settings = make_settings(tmp_path, proxied_postgresql_url)
    app = create_app(settings)
    async with lifespan(app):
        state: AppState = app.state.modelyard
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            account = await make_account(client)
            body = {"name": "k", "scopes": ["read", "predict", "write"]}  # it tries an upload
            key = (
                await client.post("/api/v1/api-keys", json=body, headers=account.headers)
            ).json()["key"]
            headers = {"X-API-Key": key}
            await make_version(client, account, iris_skops)

            async def predict() -> httpx.Response:
                return await client.post(
                    "/api/v1/predict/iris", json={"inputs": IRIS_ROWS}, headers=headers
                )

            before = [await predict() for _ in range(5)]
            await pg_proxy.cut()
            during = [await predict() for _ in range(20)]
            refused_upload = await client.post(
                "/api/v1/models/upload",
                data={"name": "other"},
                files={"file": ("m.skops", iris_bytes)},
                headers=headers,
            )
            # Everything so far is written or, the database being unreachable, spooled.
            await state.prediction_log.flush()
            await pg_proxy.restore()
            after = [await predict() for _ in range(5)]

            answers = before + during + after
            assert [r.status_code for r in answers] == [200] * 30, [r.text for r in answers]
            assert refused_upload.status_code == 503
            assert refused_upload.headers["retry-after"]
            ids = {r.json()["prediction_id"] for r in answers}
            spooled = state.metrics.registry.get_sample_value(
                "modelyard_prediction_log_rows_spooled_total"
            )
            assert spooled is not None
            assert spooled > 0

            # Wait (bounded) for the spool to be replayed once the database answers again.
            deadline = time.monotonic() + REPLAY_TIMEOUT_SECONDS
            stored: set[str] = set()
            while time.monotonic() < deadline:
                await state.prediction_log.flush()
                async with state.sessions() as db:
                    stored = {str(i) for i in await db.scalars(select(Prediction.id))}
                if ids <= stored:
                    break
                await asyncio.sleep(0.2)  # polling interval, not an assertion
            m = state.metrics.registry.get_sample_value
            assert ids <= stored, [
                m(f"modelyard_prediction_log_rows_{k}_total")
                for k in ("written", "spooled", "replayed", "dropped")
            ]
            async with state.sessions() as db:
                total = await db.scalar(select(func.count()).select_from(Prediction))
            assert total == len(ids) == 30
