"""The Open Inference Protocol: stock tritonclient round trips, raw JSON, error bodies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from sqlalchemy.ext.asyncio import AsyncEngine
from tritonclient.utils import InferenceServerException

from modelyard.config import Settings
from tests.predictions.live import live_server
from tests.serving import legit
from tests.support.factories import DEFAULT_PASSWORD, Account, make_account, make_version

IRIS = np.asarray(legit.iris()[0][:6], dtype=np.float64)


@pytest.fixture
def server(settings: Settings, engine: AsyncEngine) -> Iterator[str]:
    with live_server(settings) as address:
        yield address


@pytest.fixture
async def http(server: str) -> Any:
    async with httpx.AsyncClient(base_url=f"http://{server}") as client:
        yield client


@pytest.fixture
async def owner(http: httpx.AsyncClient) -> Account:
    return await make_account(http, password=DEFAULT_PASSWORD)


@pytest.fixture
async def key(http: httpx.AsyncClient, owner: Account) -> str:
    response = await http.post("/api/v1/api-keys", json={"name": "triton"}, headers=owner.headers)
    return str(response.json()["key"])


def triton_client(server: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server)


def infer(
    server: str,
    key: str,
    model: str,
    x: np.ndarray,
    *,
    binary: bool = True,
    version: str = "",
    outputs: list[str] | None = None,
) -> Any:
    client = triton_client(server)
    try:
        tensor = triton.InferInput(
            "input-0", list(x.shape), "FP64" if x.dtype == np.float64 else "FP32"
        )
        tensor.set_data_from_numpy(x, binary_data=binary)
        requested = [triton.InferRequestedOutput(o, binary_data=binary) for o in outputs or []]
        return client.infer(
            model,
            [tensor],
            model_version=version,
            outputs=requested or None,
            headers={"Authorization": f"Bearer {key}"},
        )
    finally:
        client.close()


async def rest_predictions(http: httpx.AsyncClient, key: str, model: str, x: np.ndarray) -> Any:
    response = await http.post(
        f"/api/v1/predict/{model}", json={"inputs": x.tolist()}, headers={"X-API-Key": key}
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_tritonclient_round_trip_matches_the_rest_route(
    server: str,
    http: httpx.AsyncClient,
    owner: Account,
    key: str,
    model_file: legit.ModelFile,
    binary: bool,
) -> None:
    await make_version(http, owner, model_file("lr_skops"), name="iris")
    result = await asyncio.to_thread(infer, server, key, "iris", IRIS, binary=binary)
    rest = await rest_predictions(http, key, "iris", IRIS)
    assert result.as_numpy("predictions").tolist() == rest["predictions"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), rest["probabilities"])
    response = result.get_response()
    assert response["model_name"] == "iris"
    assert response["model_version"] == "1"


async def test_tritonclient_with_a_version_and_string_labels(
    server: str, http: httpx.AsyncClient, owner: Account, key: str, model_file: legit.ModelFile
) -> None:
    await make_version(http, owner, model_file("lr_skops"), name="iris")
    await make_version(http, owner, model_file("lr_species_skops"), name="iris")
    v1 = await asyncio.to_thread(infer, server, key, "iris", IRIS, version="1")
    v2 = await asyncio.to_thread(
        infer, server, key, "iris", IRIS, version="2", outputs=["predictions"]
    )
    assert v1.get_response()["model_version"] == "1"
    assert set(v1.as_numpy("predictions").tolist()) <= {0, 1, 2}
    labels = [v.decode() if isinstance(v, bytes) else v for v in v2.as_numpy("predictions")]
    assert set(labels) <= set(legit.IRIS_SPECIES)
    assert v2.as_numpy("probabilities") is None


async def test_tritonclient_float32_onnx_model(
    server: str, http: httpx.AsyncClient, owner: Account, key: str, model_file: legit.ModelFile
) -> None:
    await make_version(http, owner, model_file("onnx_classifier"), name="onnx-iris")
    x = IRIS.astype(np.float32)
    result = await asyncio.to_thread(infer, server, key, "onnx-iris", x)
    rest = await rest_predictions(http, key, "onnx-iris", IRIS)
    assert result.as_numpy("predictions").tolist() == rest["predictions"]


async def test_server_and_model_metadata_and_health(
    server: str, http: httpx.AsyncClient, owner: Account, key: str, model_file: legit.ModelFile
) -> None:
    await make_version(http, owner, model_file("lr_skops"), name="iris")
    headers = {"Authorization": f"Bearer {key}"}

    def calls() -> tuple[Any, ...]:
        client = triton_client(server)
        try:
            return (
                client.is_server_live(headers=headers),
                client.is_server_ready(headers=headers),
                client.is_model_ready("iris", headers=headers),
                client.is_model_ready("nope", headers=headers),
                client.get_server_metadata(headers=headers),
                client.get_model_metadata("iris", headers=headers),
                client.get_model_metadata("iris", model_version="1", headers=headers),
            )
        finally:
            client.close()

    live, ready, model_ready, unknown_ready, server_meta, meta, meta_v1 = await asyncio.to_thread(
        calls
    )
    assert (live, ready, model_ready, unknown_ready) == (True, True, True, False)
    assert "binary_tensor_data" in server_meta["extensions"]
    assert meta["name"] == "iris"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["predictions", "probabilities"]
    assert meta_v1["versions"] == ["1"]


async def test_raw_json_infer_with_nested_and_flat_data(
    http: httpx.AsyncClient, owner: Account, key: str, model_file: legit.ModelFile
) -> None:
    await make_version(http, owner, model_file("lr_skops"), name="iris")
    rows = IRIS[:2].tolist()
    headers = {"X-API-Key": key}
    for data in (rows, [v for row in rows for v in row]):
        response = await http.post(
            "/v2/models/iris/infer",
            json={
                "id": "req-1",
                "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [2, 4], "data": data}],
            },
            headers=headers,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == "req-1"
        assert body["model_version"] == "1"
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["predictions"]["datatype"] == "INT64"
        assert outputs["predictions"]["shape"] == [2]
        assert outputs["probabilities"]["shape"] == [2, 3]
        assert len(outputs["probabilities"]["data"]) == 6


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v2/models/nope/infer", {"inputs": []}, 404),
        ("/v2/models/iris/infer", {"inputs": []}, 400),
        ("/v2/models/iris/infer", {"nothing": 1}, 400),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]},
            400,
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3]}]},
            400,
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "x", "datatype": "FP99", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
            400,
        ),
        ("/v2/models/iris/versions/abc/infer", {"inputs": []}, 400),
        ("/v2/models/iris/versions/7/infer", {"inputs": []}, 404),
    ],
)
async def test_v2_errors_are_error_objects(
    http: httpx.AsyncClient,
    owner: Account,
    key: str,
    model_file: legit.ModelFile,
    path: str,
    body: Any,
    status: int,
) -> None:
    await make_version(http, owner, model_file("lr_skops"), name="iris")
    response = await http.post(path, json=body, headers={"X-API-Key": key})
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert response.json()["error"]


async def test_v2_needs_the_same_credentials(http: httpx.AsyncClient, server: str) -> None:
    response = await http.post("/v2/models/iris/infer", json={"inputs": []})
    assert response.status_code == 401
    assert set(response.json()) == {"error"}
    with pytest.raises(InferenceServerException):
        await asyncio.to_thread(infer, server, "myd_0000000000_wrong", "iris", IRIS)


async def test_v2_malformed_json_is_an_error_object(
    http: httpx.AsyncClient, owner: Account, key: str, model_file: legit.ModelFile
) -> None:
    await make_version(http, owner, model_file("lr_skops"), name="iris")
    response = await http.post(
        "/v2/models/iris/infer",
        content=b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [NaN, 1, 2, 3]}]}',
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert set(response.json()) == {"error"}


async def test_model_metadata_lists_every_servable_version(
    client: httpx.AsyncClient, user: Account, model_file: legit.ModelFile
) -> None:
    for _ in range(3):
        await make_version(client, user, model_file("lr_skops"))
    await client.patch(
        "/api/v1/models/iris/versions/1/lifecycle",
        json={"stage": "production"},
        headers=user.headers,
    )
    await client.delete("/api/v1/models/iris/versions/2", headers=user.headers)  # archived
    default = await client.get("/v2/models/iris", headers=user.headers)
    third = await client.get("/v2/models/iris/versions/3", headers=user.headers)
    assert (default.status_code, third.status_code) == (200, 200), default.text + third.text
    # The default (production) version is described; every one a client may ask for is listed.
    assert default.json()["versions"] == ["1", "3"]
    assert third.json()["versions"] == ["1", "3"]
    archived = await client.get("/v2/models/iris/versions/2", headers=user.headers)
    assert archived.status_code == 409
    assert "archived" in archived.json()["error"]
