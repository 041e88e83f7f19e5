"""Real networks served: ResNet-18, an LSTM and a transformer encoder, uploaded through the HTTP
API, answer on REST and V2 (JSON and binary tensors) as ONNX Runtime run in-process on the same
file and as the PyTorch module, within 1e-4; inputs that do not fit name the tensor and dimension.

Exports come from the session's `dl_export` (tests/serving/dl_models.py); the database is not
what these test, so SQLite only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton
from fastapi import FastAPI
from sqlalchemy import select

from modelyard.db.tables import Prediction
from modelyard.serving.formats import ModelFormat
from modelyard.serving.onnx_cost import CostLimits
from modelyard.serving.runtimes import load_runtime
from modelyard.serving.runtimes.base import InferenceLimitExceeded, estimate_nbytes
from modelyard.serving.runtimes.onnx import (
    DEFAULT_MEMORY_BYTES,
    OnnxRuntime,
    arena_bytes,
    configure_onnx_cost,
    configure_onnx_memory,
)
from modelyard.serving.threads import AUTO, configure_onnx_threads, onnx_threads_per_worker
from modelyard.state import AppState
from tests.serving import dl_models
from tests.support.factories import Account, make_version

SQLITE_ONLY = pytest.mark.parametrize("dialect", ["sqlite"])
TOLERANCE = 1e-4
# A Keras CNN converted by tf2onnx (images [-1, 32, 32, 3]): fixed dimensions to get wrong.
KERAS_CNN = Path(__file__).parent / "data" / "keras_cnn.onnx"

Export = Callable[[str, str], Path]


def in_process(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The answer of ONNX Runtime run here on the same file, by output name."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


async def rest(
    client: httpx.AsyncClient, account: Account, model: str, inputs: Any
) -> httpx.Response:
    return await client.post(
        f"/api/v1/predict/{model}",
        content=orjson.dumps({"inputs": inputs}, option=orjson.OPT_SERIALIZE_NUMPY),
        headers={**account.headers, "content-type": "application/json"},
    )


async def v2(
    client: httpx.AsyncClient, account: Account, model: str, inputs: dict[str, np.ndarray], *,
    binary: bool,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Infer through V2 as tritonclient encodes and decodes it; return the outputs by name
    (the networks here have one, `logits`)."""
    tensors = []
    for name, value in inputs.items():
        tensor = triton.InferInput(name, list(value.shape), triton.np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value, binary_data=binary)
        tensors.append(tensor)
    outputs = [triton.InferRequestedOutput("logits", binary_data=binary)]
    body, json_size = triton.InferenceServerClient.generate_request_body(tensors, outputs)
    headers = dict(account.headers)
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    response = await client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = response.headers.get("inference-header-content-length")
    result = triton.InferResult.from_response_body(
        response.content, header_length=int(length) if length else None
    )
    return {output["name"]: result.as_numpy(output["name"]) for output in result.get_response()["outputs"]}  # fmt: skip


def assert_answers(
    answers: dict[str, np.ndarray], path: Path, network: dl_models.Network, inputs: dict[str, Any]
) -> None:
    """Equal to ONNX Runtime in-process on the same file, and to the PyTorch module."""
    expected = in_process(path, inputs)
    assert set(answers) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(answers[name], value, rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(
        answers[network.outputs[0]],
        dl_models.reference(network, inputs),
        rtol=TOLERANCE,
        atol=TOLERANCE,
    )


def tokens(rows: int, sequence: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, dl_models.VOCAB, (rows, sequence))
    mask = np.ones_like(ids)
    mask[0, sequence // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


@SQLITE_ONLY
async def test_transformer_encoder_answers_on_rest_and_v2_json_and_binary(
    client: httpx.AsyncClient, user: Account, dl_export: Export
) -> None:
    path = dl_export("transformer", "dynamo")
    network = dl_models.NETWORKS["transformer"]
    version = await make_version(client, user, path, name="encoder")
    inputs = tokens(rows=3, sequence=20)  # another sequence length than the export's

    response = await rest(client, user, "encoder", {k: v.tolist() for k, v in inputs.items()})
    assert response.status_code == 200, response.text
    answer = response.json()
    by_json = await v2(client, user, "encoder", inputs, binary=False)
    by_binary = await v2(client, user, "encoder", inputs, binary=True)

    assert set(answer) >= {"prediction_id", "outputs", "version"}
    assert_answers({k: np.array(v) for k, v in answer["outputs"].items()}, path, network, inputs)
    assert_answers(by_json, path, network, inputs)
    assert_answers(by_binary, path, network, inputs)
    tensors = [
        {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
    ]
    assert version["input_schema"] == {"tensors": tensors}
    assert version["output_schema"] == {
        "tensors": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    }
    metadata = (await client.get("/v2/models/encoder", headers=user.headers)).json()
    assert metadata["inputs"] == tensors
    assert metadata["outputs"] == version["output_schema"]["tensors"]


@SQLITE_ONLY
async def test_lstm_takes_its_one_input_as_plain_nested_lists(
    client: httpx.AsyncClient, user: Account, dl_export: Export
) -> None:
    path = dl_export("lstm", "torchscript")
    network = dl_models.NETWORKS["lstm"]
    await make_version(client, user, path, name="lstm")
    inputs = {"input_ids": tokens(rows=2, sequence=dl_models.SEQUENCE + 4)["input_ids"]}

    response = await rest(client, user, "lstm", inputs["input_ids"].tolist())
    by_binary = await v2(client, user, "lstm", inputs, binary=True)

    assert response.status_code == 200, response.text
    assert_answers(
        {"logits": np.array(response.json()["outputs"]["logits"])}, path, network, inputs
    )
    assert_answers(by_binary, path, network, inputs)


@SQLITE_ONLY
async def test_resnet18_answers_an_image_on_v2_binary_and_rest(
    client: httpx.AsyncClient, user: Account, dl_export: Export
) -> None:
    path = dl_export("resnet18", "torchscript")
    network = dl_models.NETWORKS["resnet18"]
    await make_version(client, user, path, name="resnet")
    image = np.random.default_rng(5).standard_normal((1, *dl_models.IMAGE), dtype=np.float32)
    inputs = {"images": image}

    by_binary = await v2(client, user, "resnet", inputs, binary=True)
    response = await rest(client, user, "resnet", {"images": image})

    assert by_binary["logits"].shape == (1, 1000)
    assert_answers(by_binary, path, network, inputs)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(
        np.array(response.json()["outputs"]["logits"]),
        by_binary["logits"],
        rtol=TOLERANCE,
        atol=TOLERANCE,
    )


@SQLITE_ONLY
async def test_inputs_that_do_not_fit_name_the_tensor_and_the_dimension(
    client: httpx.AsyncClient, user: Account, dl_export: Export
) -> None:
    await make_version(client, user, dl_export("transformer", "dynamo"), name="encoder")
    await make_version(client, user, KERAS_CNN, name="cnn")
    ids = [[1, 2, 3], [4, 5, 6]]

    cases = {
        "cnn": [
            ({"images": np.zeros((1, 32, 31, 3), np.float32)},
             "input 'images': dimension 2 is 31; the model takes 32"),
            ({"images": np.zeros((32, 32, 3), np.float32)},
             "input 'images' has 3 dimensions [32, 32, 3]; the model takes 4 [-1, 32, 32, 3]"),
        ],
        "encoder": [
            ({"input_ids": ids, "attention_mask": [[1, 1], [1, 1]]},
             "input 'attention_mask': dimension 1 is 2 but input 'input_ids' dimension 1 is 3"),
            ({"input_ids": ids, "attention_mask": [[1, 1, 1]]},
             "input 'attention_mask': dimension 0 is 1 but input 'input_ids' dimension 0 is 2"),
            ({"input_ids": ids}, "missing attention_mask"),
            ({"input_ids": ids, "attention_mask": ids, "token_type_ids": ids},
             "unknown token_type_ids"),
            ({"input_ids": [[1] * 513], "attention_mask": [[1] * 513]},
             "input 'input_ids': dimension 1 is 513, more than the 512 this model is admitted"),
            ({"input_ids": [[1.5, 2, 3]], "attention_mask": [[1, 1, 1]]},
             "input 'input_ids': INT64 data must be integers"),
        ],
    }  # fmt: skip
    for model, refusals in cases.items():
        for inputs, message in refusals:
            response = await rest(client, user, model, inputs)
            assert response.status_code == 422, (inputs, response.text)
            assert message in response.json()["detail"], response.json()["detail"]

    # V2 checks the declared datatype and shape before reading any value.
    body = {
        "inputs": [
            {"name": "input_ids", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
            {"name": "attention_mask", "datatype": "INT64", "shape": [1, 3], "data": [1, 1, 1]},
        ]
    }
    response = await client.post("/v2/models/encoder/infer", json=body, headers=user.headers)
    assert response.status_code == 400
    assert response.json() == {"error": "input 'input_ids' is FP32; the model takes INT64"}
    body["inputs"][0].update(datatype="INT64", shape=[1, 4])
    response = await client.post("/v2/models/encoder/infer", json=body, headers=user.headers)
    assert response.status_code == 400
    assert "dimension 1 is 3 but input 'input_ids' dimension 1 is 4" in response.json()["error"]


@SQLITE_ONLY
async def test_a_networks_shadow_copy_runs_and_is_compared_by_value(
    app: FastAPI, client: httpx.AsyncClient, user: Account, dl_export: Export
) -> None:
    path = dl_export("lstm", "torchscript")
    for _ in range(2):
        await make_version(client, user, path, name="lstm")
    policy = {
        "routes": [{"target": "v1", "weight": 1}],
        "shadow": {"target": "v2", "sample_rate": 1.0},
    }
    put = await client.put("/api/v1/models/lstm/traffic", json=policy, headers=user.headers)
    assert put.status_code == 200, put.text
    inputs = {"input_ids": tokens(rows=2, sequence=5)["input_ids"]}

    response = await rest(client, user, "lstm", {"input_ids": inputs["input_ids"]})
    answers = await v2(client, user, "lstm", inputs, binary=True)

    assert response.status_code == 200, response.text
    state: AppState = app.state.modelyard
    await state.predictor.drain_shadows()
    await state.prediction_log.flush()
    async with state.sessions() as db:
        rows = list(await db.scalars(select(Prediction).order_by(Prediction.created_at)))
    primary = [row for row in rows if not row.shadow]
    shadows = [row for row in rows if row.shadow]
    assert [(row.protocol, row.version, row.n_rows) for row in primary] == [
        ("rest", 1, 2),
        ("v2", 1, 2),
    ]
    assert primary[0].inputs == {"input_ids": inputs["input_ids"].tolist()}
    assert isinstance(primary[1].outputs, dict)
    np.testing.assert_allclose(primary[1].outputs["logits"], answers["logits"], rtol=1e-6)
    assert [(row.status, row.version, row.n_rows) for row in shadows] == [("success", 2, 2)] * 2
    # The same file in both versions: the same answers.
    assert [row.abs_diff_sum for row in shadows] == [0.0, 0.0]


def test_served_sessions_take_the_workers_share_of_the_cores(dl_export: Export) -> None:
    data = dl_export("lstm", "torchscript").read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    configure_onnx_threads(onnx_threads_per_worker(AUTO, workers=2, cores=6))
    try:
        runtime = load_runtime(data, ModelFormat.ONNX, sha256=sha256)
    finally:
        configure_onnx_threads(1)

    assert isinstance(runtime, OnnxRuntime)
    assert runtime._session.get_session_options().intra_op_num_threads == 3
    assert onnx_threads_per_worker(AUTO, workers=4, cores=2) == 1
    assert onnx_threads_per_worker(5, workers=4, cores=2) == 5


def test_the_cache_counts_a_networks_arena_beside_its_weights(dl_export: Export) -> None:
    data = dl_export("resnet18", "torchscript").read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    configure_onnx_memory(DEFAULT_MEMORY_BYTES, batch_rows=2)
    try:
        runtime = load_runtime(data, ModelFormat.ONNX, sha256=sha256)
    finally:
        configure_onnx_memory(DEFAULT_MEMORY_BYTES)

    assert isinstance(runtime, OnnxRuntime)
    cost = runtime.cost
    assert cost.max_rows == 6
    # Two of the six images of its largest call: a third of that call's intermediate tensors.
    activations = cost.peak_memory_bytes - cost.weights_bytes
    assert runtime.nbytes == estimate_nbytes(data, ModelFormat.ONNX) + -(-activations // 3)
    assert arena_bytes(cost) == activations  # without a batch size: the largest call's


def test_a_network_call_past_its_estimates_rows_is_refused_before_it_runs(
    dl_export: Export,
) -> None:
    data = dl_export("lstm", "torchscript").read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    configure_onnx_cost(CostLimits(max_rows=2))
    try:
        runtime = load_runtime(data, ModelFormat.ONNX, sha256=sha256)
    finally:
        configure_onnx_cost(CostLimits())

    assert runtime.max_rows == 2
    assert runtime.run({"input_ids": np.ones((2, 4), np.int64)})["logits"].shape == (2, 3)
    with pytest.raises(InferenceLimitExceeded, match="at most 2 rows per call"):
        runtime.run({"input_ids": np.ones((3, 4), np.int64)})
