"""Workers of one host share their cache epochs: a change in one is seen by the others at once."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.changes.epochs import Epoch, Epochs
from tests.support import factories
from tests.support.factories import make_account, make_version
from tests.support.settings import make_settings

ROWS = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}


def test_a_bump_is_seen_through_another_mapping_of_the_file(tmp_path: Path) -> None:
    one, two = Epochs(tmp_path), Epochs(tmp_path)
    try:
        before = two.read(Epoch.REGISTRY)
        one.bump(Epoch.REGISTRY)
        assert two.read(Epoch.REGISTRY) == before + 1
        assert two.read(Epoch.AUTH) == 0
    finally:
        one.close()
        two.close()


async def test_revocation_and_promotion_in_one_worker_reach_the_other(
    tmp_path: Path, database_url: str, engine: AsyncEngine, iris_skops: Path
) -> None:
    settings = make_settings(tmp_path, database_url)
    async with factories.serve(settings) as first, factories.serve(settings) as second:
        account = await make_account(first)
        await make_version(first, account, iris_skops)
        await make_version(first, account, iris_skops)
        created = await first.post("/api/v1/api-keys", json={"name": "k"}, headers=account.headers)
        key = {"X-API-Key": created.json()["key"]}

        served = await second.post("/api/v1/predict/iris", json=ROWS, headers=key)
        assert served.json()["version"] == 2  # remembered by the second worker now

        promoted = await first.patch(
            "/api/v1/models/iris/versions/1/lifecycle",
            json={"stage": "production"},
            headers=account.headers,
        )
        assert promoted.status_code == 200
        served = await second.post("/api/v1/predict/iris", json=ROWS, headers=key)
        assert served.json()["version"] == 1

        revoked = await first.delete(
            f"/api/v1/api-keys/{created.json()['id']}", headers=account.headers
        )
        assert revoked.status_code == 204
        refused = await second.post("/api/v1/predict/iris", json=ROWS, headers=key)
        assert refused.status_code == 401
