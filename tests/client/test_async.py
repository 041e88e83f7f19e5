"""The async SDK in-process (httpx's ASGI transport) on both databases."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sklearn.linear_model import LogisticRegression

from modelyard_client import AsyncClient, Client
from modelyard_client.errors import NotFound, Unauthorized
from modelyard_client.types import LoggedPrediction, Page
from tests.support.factories import Account

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture
async def sdk(app: FastAPI, user: Account) -> AsyncIterator[AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with AsyncClient("http://testserver", token=user.access_token, transport=transport) as c:
        yield c


def test_the_async_client_has_every_method_of_the_sync_one() -> None:
    public = {n for n in dir(Client) if not n.startswith("_")} - {"close"}
    twin = {n for n in dir(AsyncClient) if not n.startswith("_")} - {"aclose"}

    assert public == twin
    for name in public:
        sync, aio = getattr(Client, name), getattr(AsyncClient, name)
        if callable(sync):
            assert inspect.iscoroutinefunction(aio), name
            assert inspect.signature(sync) == inspect.signature(aio), name


async def test_registry_round_trip(sdk: AsyncClient, iris_skops: Path, tmp_path: Path) -> None:
    created = await sdk.upload(iris_skops, "iris", metrics={"accuracy": 0.9})
    await sdk.promote("iris", created.version, "production")
    await sdk.set_alias("iris", "champion", created.version)

    model = await sdk.get_model("iris")
    assert (model.production_version, model.aliases) == (1, {"champion": 1})
    assert (await sdk.list_models()).total == 1
    assert [v.version for v in (await sdk.list_versions("iris")).items] == [1]
    path = await sdk.download("iris", alias="champion", dest=tmp_path)
    assert await asyncio.to_thread(path.read_bytes) == await asyncio.to_thread(
        iris_skops.read_bytes
    )
    loaded = await sdk.load_model("iris", stage="production")
    assert isinstance(loaded, LogisticRegression)
    with pytest.raises(NotFound):
        await sdk.get_model("nope")


async def test_predict_and_the_prediction_log(sdk: AsyncClient, iris_skops: Path) -> None:
    await sdk.upload(iris_skops, "iris")

    result = await sdk.predict("iris", np.array(ROWS))
    assert result.predictions == [0, 2]

    async def logged() -> Page[LoggedPrediction]:
        for _ in range(600):  # bounded (30 s): the log writer flushes in the background
            page = await sdk.list_predictions()
            # Items, not `total`: on SQLite the page and its count are separate reads, and the
            # writer may commit between them.
            if page.items:
                return page
            await asyncio.sleep(0.05)
        raise AssertionError("the prediction was never logged")

    page = await logged()
    assert page.items[0].id == result.prediction_id
    stats = await sdk.model_analytics()
    assert stats[0].total_predictions == 1
    assert sum(d.prediction_count for d in await sdk.usage(days=2)) == 1


async def test_experiments_and_keys(sdk: AsyncClient, app: FastAPI) -> None:
    experiment = await sdk.create_experiment("sweep")
    await sdk.log_metrics(experiment.id, {"loss": 0.5}, step=1)
    assert [m.value for m in await sdk.get_metrics(experiment.id)] == [0.5]

    created = await sdk.create_api_key("ci")
    transport = httpx.ASGITransport(app=app)
    async with AsyncClient("http://testserver", api_key=created.key, transport=transport) as keyed:
        assert (await keyed.me()).email == (await sdk.me()).email
        await sdk.revoke_api_key(created.id)
        with pytest.raises(Unauthorized):
            await keyed.me()


async def test_account_and_user_administration(
    sdk: AsyncClient, app: FastAPI, admin: Account, user: Account
) -> None:
    transport = httpx.ASGITransport(app=app)
    assert (await sdk.update_me(full_name="Ada")).full_name == "Ada"
    async with AsyncClient("http://testserver", token=admin.access_token, transport=transport) as a:
        assert user.email in [u.email for u in (await a.list_users(limit=100)).items]
        assert (await a.update_user(user.id, is_active=False)).is_active is False
    with pytest.raises(Unauthorized):
        await sdk.me()


async def test_admin_reads_and_erases_a_user(
    sdk: AsyncClient, app: FastAPI, admin: Account, user: Account, iris_skops: Path
) -> None:
    await sdk.upload(iris_skops, "iris")
    transport = httpx.ASGITransport(app=app)
    async with AsyncClient("http://testserver", token=admin.access_token, transport=transport) as a:
        detail = await a.get_user(user.id)
        assert (detail.email, detail.model_count, detail.version_count) == (user.email, 1, 1)
        await a.erase_user(user.id)
        with pytest.raises(NotFound):
            await a.get_user(user.id)
    with pytest.raises(Unauthorized):
        await sdk.me()


async def test_user_erases_their_own_account(app: FastAPI, user: Account) -> None:
    transport = httpx.ASGITransport(app=app)
    async with AsyncClient("http://testserver", token=user.access_token, transport=transport) as c:
        await c.erase_me()
    async with AsyncClient("http://testserver", token=user.access_token, transport=transport) as c:
        with pytest.raises(Unauthorized):
            await c.me()


async def test_logout_ends_the_session(app: FastAPI, user: Account) -> None:
    transport = httpx.ASGITransport(app=app)
    async with AsyncClient("http://testserver", transport=transport) as session:
        tokens = await session.login(user.email, user.password)
        await session.logout()
    async with AsyncClient(
        "http://testserver", token=tokens.access_token, transport=transport
    ) as old:
        with pytest.raises(Unauthorized):
            await old.me()
