"""`POST /api/v1/models/upload`: every format round-trips; bad and hostile files leave nothing."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from modelyard.db.tables import ModelVersion, RegisteredModel
from modelyard.state import AppState
from tests.serving import hostile, legit
from tests.support.factories import Account, lifespan, make_version, upload_model

API = "/api/v1/models"


async def stored_keys(app: FastAPI) -> list[str]:
    state: AppState = app.state.modelyard
    return [info.key async for info in state.store.list("models/")]


async def row_counts(app: FastAPI) -> tuple[int, int]:
    state: AppState = app.state.modelyard
    async with state.sessions() as db:
        models = await db.scalar(select(func.count()).select_from(RegisteredModel))
        versions = await db.scalar(select(func.count()).select_from(ModelVersion))
    return models or 0, versions or 0


def temp_files(app: FastAPI) -> list[Path]:
    state: AppState = app.state.modelyard
    tmp = state.settings.data_dir / "tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


@pytest.mark.parametrize("case", legit.LEGIT_FILES, ids=lambda c: c.name)
async def test_every_format_round_trips(
    client: httpx.AsyncClient, user: Account, model_file: legit.ModelFile, case: legit.LegitCase
) -> None:
    path = model_file(case.name)
    content = path.read_bytes()
    version = await make_version(client, user, path, name=case.name.replace("_", "-"))

    assert version["version"] == 1
    assert version["stage"] == "development"
    assert version["framework"] == case.framework.value
    assert version["format"] == case.format.value
    assert version["task_type"] == case.task_type
    assert version["file_size"] == len(content)
    assert version["sha256"] == hashlib.sha256(content).hexdigest()
    features = version["input_schema"]["features"]
    assert len(features) == case.n_features
    if case.feature_names:
        assert [f["name"] for f in features] == case.feature_names
    if case.classes is not None:
        assert version["output_schema"]["classes"] == case.classes

    url = f"{API}/{version['model_id']}/versions/1/download"
    download = await client.get(url, headers=user.headers)
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["etag"].strip('"') == version["sha256"]
    assert "attachment" in download.headers["content-disposition"]


async def test_upload_numbers_versions_and_creates_the_model_once(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    first = await make_version(client, user, iris_skops, description="v1", tags=["a"])
    second = await make_version(client, user, iris_skops, metrics={"accuracy": 0.97})
    assert (first["version"], second["version"]) == (1, 2)
    assert first["model_id"] == second["model_id"]
    assert second["metrics"] == {"accuracy": 0.97}
    model = (await client.get(f"{API}/iris", headers=user.headers)).json()
    assert model["version_count"] == 2
    assert model["latest_version"] == 2
    assert model["production_version"] is None
    assert model["task_type"] == "classification"
    assert model["description"] == "v1"
    assert model["tags"] == ["a"]
    assert [v["version"] for v in model["versions"]] == [2, 1]


async def test_upload_keeps_user_schema_metadata_and_hyperparameters(
    client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    version = await make_version(
        client,
        user,
        iris_skops,
        input_schema={"features": [{"name": n, "type": "float"} for n in names]},
        hyperparameters={"C": 1.0, "solver": "lbfgs"},
        metadata={"dataset": "iris"},
        framework="sklearn",
        task_type="classification",
    )
    assert [f["name"] for f in version["input_schema"]["features"]] == names
    assert version["hyperparameters"] == {"C": 1.0, "solver": "lbfgs"}
    assert version["metadata"] == {"dataset": "iris"}


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"framework": "onnx"}, "not onnx"),
        ({"framework": "pytorch"}, "a pytorch model is uploaded as its ONNX export"),
        ({"task_type": "regression"}, "classification"),
        ({"input_schema": {"features": [{"name": "a"}]}}, "the model takes 4"),
    ],
)
async def test_upload_refuses_claims_the_file_contradicts(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    iris_skops: Path,
    fields: dict[str, Any],
    fragment: str,
) -> None:
    response = await upload_model(client, user, iris_skops, **fields)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]
    assert await row_counts(app) == (0, 0)
    assert await stored_keys(app) == []


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"name": ""}, ["body", "name"]),
        ({"name": "bad name!"}, ["body", "name"]),
        ({"name": "8d7c0f1e-3c0e-4b47-9a5e-2a7d3d1b2c44"}, ["body", "name"]),
        ({"metrics": "{not json"}, ["body", "metrics"]),
        ({"metrics": '{"acc": NaN}'}, ["body", "metrics"]),
        ({"metrics": {"acc": "high"}}, ["body", "metrics", "acc"]),
        ({"tags": {"a": 1}}, ["body", "tags"]),
        ({"framework": "torch"}, ["body", "framework"]),
        ({"experiment_id": "nope"}, ["body", "experiment_id"]),
    ],
)
async def test_upload_validates_its_fields(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    iris_skops: Path,
    fields: dict[str, Any],
    loc: list[str],
) -> None:
    fields = dict(fields)  # the parameter is shared by both dialects' runs
    name = fields.pop("name", "iris")
    response = await upload_model(client, user, iris_skops, name=name, **fields)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == loc
    assert await row_counts(app) == (0, 0)
    assert temp_files(app) == []


async def test_upload_refuses_unknown_fields(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path
) -> None:
    response = await upload_model(client, user, iris_skops, version="7")
    assert response.status_code == 422
    assert await row_counts(app) == (0, 0)


async def test_upload_needs_credentials_before_reading_the_file(
    app: FastAPI, client: httpx.AsyncClient, iris_skops: Path
) -> None:
    response = await client.post(
        f"{API}/upload", data={"name": "iris"}, files={"file": ("m.skops", b"PK" + b"0" * 64)}
    )
    assert response.status_code == 401
    assert temp_files(app) == []


async def test_non_model_file_is_unsupported(
    app: FastAPI, client: httpx.AsyncClient, user: Account, tmp_path: Path
) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("just some text\n" * 10)
    response = await upload_model(client, user, junk)
    assert response.status_code == 415
    assert await row_counts(app) == (0, 0)
    assert await stored_keys(app) == []


async def test_upload_over_the_limit_is_413_and_keeps_nothing(
    client: httpx.AsyncClient, tmp_path: Path, database_url: str, engine: Any
) -> None:

    from modelyard.app import create_app
    from tests.support.factories import make_account
    from tests.support.settings import make_settings

    settings = make_settings(tmp_path, database_url, max_upload_bytes=64 * 1024)
    app = create_app(settings)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as small:
            account = await make_account(small)
            big = tmp_path / "big.skops"
            big.write_bytes(b"PK" + b"\0" * (256 * 1024))
            response = await upload_model(small, account, big)
            assert response.status_code == 413
            assert response.headers["content-type"] == "application/problem+json"
            assert temp_files(app) == []
            assert await row_counts(app) == (0, 0)
            assert await stored_keys(app) == []


async def test_pickle_uploads_can_be_switched_off(
    client: httpx.AsyncClient,
    tmp_path: Path,
    database_url: str,
    engine: Any,
    model_file: legit.ModelFile,
) -> None:

    from modelyard.app import create_app
    from tests.support.factories import make_account
    from tests.support.settings import make_settings

    app = create_app(make_settings(tmp_path, database_url, allow_pickle=False))
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            account = await make_account(c)
            refused = await upload_model(c, account, model_file("lr_joblib"))
            assert refused.status_code == 415
            assert "disabled" in refused.json()["detail"]
            assert await row_counts(app) == (0, 0)
            accepted = await upload_model(c, account, model_file("lr_skops"))
            assert accepted.status_code == 201


@pytest.mark.parametrize("case", hostile.HOSTILE_FILES, ids=lambda c: c.name)
async def test_hostile_file_is_refused_and_leaves_nothing(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: Account,
    iris_skops: Path,
    tmp_path: Path,
    case: hostile.HostileCase,
) -> None:
    marker = tmp_path / "pwned"
    path = case.build(tmp_path, marker)
    response = await upload_model(client, user, path, name="evil")
    assert response.status_code in (413, 415, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert str(tmp_path) not in response.text
    assert not marker.exists()
    assert await row_counts(app) == (0, 0)
    assert await stored_keys(app) == []
    assert temp_files(app) == []
    # The server is alive and a legitimate upload works right after.
    assert (await client.get("/health")).status_code == 200
    ok = await make_version(client, user, iris_skops)
    assert ok["version"] == 1


async def test_concurrent_uploads_of_a_new_name_number_versions_one_to_n(
    tmp_path: Path, database_url: str, engine: Any, iris_skops: Path
) -> None:

    from modelyard.app import create_app
    from tests.support.factories import make_account
    from tests.support.settings import make_settings

    n = 8
    # Probe bounds wide enough for all n at once: this test is about numbering, not probes.
    settings = make_settings(
        tmp_path, database_url, probe_max_concurrent=n, probe_max_concurrent_per_user=n
    )
    app = create_app(settings)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            user = await make_account(client)
            responses = await asyncio.gather(
                *(upload_model(client, user, iris_skops, name="race") for _ in range(n))
            )
            assert [r.status_code for r in responses] == [201] * n, [r.text for r in responses]
            assert sorted(r.json()["version"] for r in responses) == list(range(1, n + 1))
            assert len({r.json()["model_id"] for r in responses}) == 1
            assert await row_counts(app) == (1, n)
            assert len(await stored_keys(app)) == n


async def test_upload_links_an_experiment_and_survives_its_deletion(
    client: httpx.AsyncClient, user: Account, other_user: Account, iris_skops: Path
) -> None:
    experiment = (
        await client.post("/api/v1/experiments", json={"name": "run-1"}, headers=user.headers)
    ).json()
    version = await make_version(client, user, iris_skops, experiment_id=experiment["id"])
    assert version["experiment_id"] == experiment["id"]
    detail = (
        await client.get(f"/api/v1/experiments/{experiment['id']}", headers=user.headers)
    ).json()
    assert [(v["model_name"], v["version"]) for v in detail["model_versions"]] == [("iris", 1)]

    # Another user cannot attach a version to it.
    foreign = await upload_model(
        client, other_user, iris_skops, name="theirs", experiment_id=experiment["id"]
    )
    assert foreign.status_code == 404

    deleted = await client.delete(f"/api/v1/experiments/{experiment['id']}", headers=user.headers)
    assert deleted.status_code == 204
    kept = await client.get(f"{API}/iris/versions/1", headers=user.headers)
    assert kept.status_code == 200
    assert kept.json()["experiment_id"] is None


async def test_decompression_bomb_is_refused_by_the_probe_memory_limit(
    tmp_path: Path, database_url: str, engine: Any, model_file: legit.ModelFile
) -> None:

    from modelyard.app import create_app
    from tests.support.factories import make_account
    from tests.support.settings import make_settings

    settings = make_settings(tmp_path, database_url, probe_memory_bytes=512 * 1024**2)
    app = create_app(settings)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            account = await make_account(c)
            bomb = hostile.joblib_zlib_bomb(tmp_path, tmp_path / "marker")
            response = await upload_model(c, account, bomb, name="bomb")
            assert response.status_code == 422
            assert "needs more than 512 MiB" in response.json()["detail"]
            assert await row_counts(app) == (0, 0)
            assert await stored_keys(app) == []
            ok = await upload_model(c, account, model_file("lr_joblib"))
            assert ok.status_code == 201


@pytest.mark.parametrize("field", ["hyperparameters", "metadata", "output_schema"])
async def test_upload_with_deeply_nested_json_field_answers_422(
    app: FastAPI, client: httpx.AsyncClient, user: Account, iris_skops: Path, field: str
) -> None:
    deep = '{"a":' * 300 + "1" + "}" * 300
    response = await upload_model(client, user, iris_skops, **{field: deep})

    assert response.status_code == 422
    assert "nested deeper than 32 levels" in response.text
    assert await row_counts(app) == (0, 0)


async def test_upload_past_the_probe_bounds_answers_429_or_503_and_keeps_nothing(
    tmp_path: Path, database_url: str, engine: Any, model_file: legit.ModelFile
) -> None:
    import uuid

    from modelyard.app import create_app
    from tests.support.factories import make_account
    from tests.support.settings import make_settings

    settings = make_settings(
        tmp_path, database_url, probe_max_concurrent=2, probe_max_concurrent_per_user=1
    )
    app = create_app(settings)
    async with lifespan(app):
        state: AppState = app.state.modelyard
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            alice, bob = await make_account(c), await make_account(c)
            # Alice's first upload is being probed: the slot is held here, deterministically.
            with state.prober.slot(uuid.UUID(alice.id)):
                refused = await upload_model(c, alice, model_file("lr_skops"))
                assert refused.status_code == 429
                assert refused.headers["retry-after"] == "5"
                assert refused.headers["content-type"] == "application/problem+json"
                assert "uploads being checked" in refused.json()["detail"]
                with state.prober.slot(None):
                    busy = await upload_model(c, bob, model_file("lr_skops"))
                    assert busy.status_code == 503
                    assert busy.headers["retry-after"] == "5"
                assert await row_counts(app) == (0, 0)
                assert await stored_keys(app) == []
                assert temp_files(app) == []
                accepted = await upload_model(c, bob, model_file("lr_skops"))
                assert accepted.status_code == 201
            again = await upload_model(c, alice, model_file("lr_skops"))
            assert again.status_code == 201
