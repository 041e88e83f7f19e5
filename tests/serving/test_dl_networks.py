"""Real networks (ResNet-18, an LSTM, a transformer encoder) pass the upload check with a cost.

The ONNX files are exported here from PyTorch, by both exporters, once per run (the
`dl_files` fixture; ~40 s on a 2-core machine). torch is imported by tests/serving/dl_models.py
only, in the test process; the server never imports it (checked in a fresh process below).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest

from modelyard.app import create_app
from modelyard.serving.formats import ModelFormat
from modelyard.serving.loader import check_onnx
from modelyard.serving.onnx_cost import CostLimits, estimate_onnx_cost
from modelyard.serving.probe import ModelProber
from modelyard.serving.runtimes.onnx import configure_onnx_cost
from tests.serving import dl_models
from tests.support.factories import Account, lifespan, make_account, make_version, upload_model
from tests.support.settings import PROBE_SOCKET, make_settings

CASES = [(name, exporter) for name in dl_models.NETWORKS for exporter in dl_models.EXPORTERS]
IDS = [f"{name}-{exporter}" for name, exporter in CASES]
# ResNet-18's forward pass at 224x224: 1.82 G multiply-adds (torchvision's model card).
RESNET18_FLOPS = 2 * 1.82e9


@pytest.fixture(scope="session")
def dl_files(dl_export: Callable[[str, str], Path]) -> dict[tuple[str, str], Path]:
    """Every network exported by both exporters, once per run."""
    return {(name, exporter): dl_export(name, exporter) for name, exporter in CASES}


def _inputs(name: str, exporter: str, rows: int) -> dict[str, np.ndarray[Any, Any]]:
    """Inputs of `rows` rows, with another sequence length than the export's when it is dynamic."""
    network = dl_models.NETWORKS[name]
    dynamic = network.torchscript_dynamic if exporter == "torchscript" else None
    sequence = dl_models.SEQUENCE if dynamic else dl_models.SEQUENCE + 8
    rng = np.random.default_rng(7)
    if name == "resnet18":
        return {"images": rng.standard_normal((rows, *dl_models.IMAGE), dtype=np.float32)}
    ids = rng.integers(0, dl_models.VOCAB, (rows, sequence))
    if name == "lstm":
        return {"input_ids": ids}
    mask = np.ones_like(ids)
    mask[0, sequence // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize(("name", "exporter"), CASES, ids=IDS)
def test_export_answers_as_the_pytorch_module(
    dl_files: dict[tuple[str, str], Path], name: str, exporter: str
) -> None:
    import onnxruntime as ort

    inputs = _inputs(name, exporter, rows=3)
    session = ort.InferenceSession(
        str(dl_files[name, exporter]), providers=["CPUExecutionProvider"]
    )

    (answer,) = session.run(None, inputs)

    expected = dl_models.reference(dl_models.NETWORKS[name], inputs)
    np.testing.assert_allclose(answer, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("name", "exporter"), CASES, ids=IDS)
def test_network_passes_the_graph_rules_and_gets_a_cost(
    dl_files: dict[tuple[str, str], Path], name: str, exporter: str
) -> None:
    model = check_onnx(dl_files[name, exporter].read_bytes())

    cost = estimate_onnx_cost(model, CostLimits())

    assert cost.max_rows is not None
    assert cost.max_rows >= 1
    assert 0 < cost.flops <= CostLimits().max_flops
    assert 0 < cost.peak_memory_bytes <= CostLimits().max_memory_bytes
    if name == "resnet18":
        assert cost.flops_per_row == pytest.approx(RESNET18_FLOPS, rel=0.01)
        # 150,528 values an image: 6 fit the request limit of 1,000,000 values.
        assert cost.assumed_input == {"images": [6, 3, 224, 224]}


def test_the_operators_of_every_network_are_recorded(
    dl_files: dict[tuple[str, str], Path],
) -> None:
    # What the exporters emit (docs/guides/registry.md, "Supported formats"); all admitted above.
    emitted = {
        (name, exporter): sorted({node.op_type for node in onnx.load(str(path)).graph.node})
        for (name, exporter), path in dl_files.items()
    }

    assert {"Conv", "MaxPool", "Gemm", "Relu", "Add"} <= set(emitted["resnet18", "dynamo"])
    assert "LSTM" in emitted["lstm", "torchscript"]
    assert "LSTM" in emitted["lstm", "dynamo"]
    assert {"LayerNormalization", "Softmax", "MatMul"} <= set(emitted["transformer", "dynamo"])


@pytest.mark.parametrize(("name", "exporter"), CASES, ids=IDS)
async def test_network_uploads_with_its_cost_on_the_version(
    client: httpx.AsyncClient,
    user: Account,
    dl_files: dict[tuple[str, str], Path],
    name: str,
    exporter: str,
) -> None:
    version = await make_version(
        client, user, dl_files[name, exporter], name=f"{name}-{exporter}", metadata={"cost": 1}
    )

    assert version["framework"] == "onnx"
    cost = version["metadata"]["cost"]
    assert cost["flops"] > 0
    assert cost["peak_memory_bytes"] > cost["weights_bytes"] > 0
    assert cost["max_rows"] >= 1
    assert set(cost["assumed_input"]) == set(dl_models.NETWORKS[name].example())
    shown = await client.get(f"/api/v1/models/{name}-{exporter}/versions/1", headers=user.headers)
    assert shown.json()["metadata"]["cost"] == cost


async def test_metadata_update_keeps_the_servers_cost(
    client: httpx.AsyncClient, user: Account, dl_files: dict[tuple[str, str], Path]
) -> None:
    version = await make_version(client, user, dl_files["lstm", "torchscript"], name="lstm")

    response = await client.patch(
        "/api/v1/models/lstm/versions/1",
        json={"metadata": {"team": "nlp", "cost": {"flops": 1}}},
        headers=user.headers,
    )

    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == {"team": "nlp", "cost": version["metadata"]["cost"]}


async def test_resnet18_upload_check_time_is_measured(
    dl_files: dict[tuple[str, str], Path],
    prober: ModelProber,
    record_property: Any,
) -> None:
    # Measured, not asserted (timings belong in reports): the target is 3 s on 2 cores.
    path = dl_files["resnet18", "torchscript"]
    started = time.perf_counter()
    report = await prober.probe(path, ModelFormat.ONNX)
    seconds = time.perf_counter() - started

    record_property("resnet18_probe_seconds", round(seconds, 2))
    assert report.cost is not None
    assert report.inputs == [{"name": "images", "type": "float32", "shape": [-1, 3, 224, 224]}]


async def test_flops_budget_set_low_refuses_resnet18_with_the_figures(
    tmp_path: Path, database_url: str, engine: Any, dl_files: dict[tuple[str, str], Path]
) -> None:
    settings = make_settings(tmp_path, database_url, onnx_max_flops_per_request=10**9)
    app = create_app(settings)
    try:
        async with lifespan(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                account = await make_account(c)
                response = await upload_model(c, account, dl_files["resnet18", "dynamo"], name="r")
    finally:
        configure_onnx_cost(CostLimits())  # the app set this process's budgets; put them back

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"].endswith("/model-rejected")
    assert body["detail"] == (
        "model refused: one row (images [1, 3, 224, 224]) costs about 3.63 GFLOPs and "
        "50.7 MiB of memory (44.6 MiB of weights), over this server's budget of 1 GFLOPs and "
        "2 GiB per request"
    )


def test_the_server_never_imports_torch(
    tmp_path: Path, sqlite_url: str, dl_files: dict[tuple[str, str], Path]
) -> None:
    # A fresh interpreter (this one has torch): start the app, warm it up for every framework,
    # load and run an exported network, and look at what was imported.
    script = textwrap.dedent(
        """
        import asyncio, hashlib, json, sys
        from pathlib import Path
        import numpy as np
        from asgi_lifespan import LifespanManager
        from modelyard.app import create_app
        from modelyard.config import Settings
        from modelyard.serving.formats import Framework, ModelFormat
        from modelyard.serving.runtimes import load_runtime
        from modelyard.serving.warmup import warm_up

        async def main():
            settings = Settings(
                _env_file=None,
                data_dir=Path(sys.argv[1]) / "data",
                database_url=sys.argv[2],
                secret_key="test-secret-key-that-is-long-enough-for-hs256",
                probe_socket=Path(sys.argv[4]),
            )
            app = create_app(settings)
            async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60):
                warm_up(list(Framework))
                data = Path(sys.argv[3]).read_bytes()
                runtime = load_runtime(
                    data, ModelFormat.ONNX, sha256=hashlib.sha256(data).hexdigest()
                )
                runtime.predict(np.zeros((2, 5), dtype=np.int64))
            print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "torch")))

        asyncio.run(main())
        """
    )
    result = subprocess.run(  # noqa: S603 - this interpreter, our own script
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path),
            sqlite_url,
            str(dl_files["lstm", "dynamo"]),
            str(PROBE_SOCKET),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).parents[2],
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# A Keras CNN (Conv2D, BatchNormalization, MaxPooling2D, GlobalAveragePooling2D, Dropout, Dense)
# converted by tf2onnx 1.17 from tensorflow-cpu 2.21 (opset 17): TensorFlow is not a test
# dependency, so the 24 KB file is kept here. It was made with
#   spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32, name="images"),)
#   proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
KERAS_CNN = Path(__file__).parent / "data" / "keras_cnn.onnx"


async def test_keras_cnn_converted_by_tf2onnx_uploads_with_its_cost(
    client: httpx.AsyncClient, user: Account
) -> None:
    operators = {node.op_type for node in onnx.load(str(KERAS_CNN)).graph.node}

    version = await make_version(client, user, KERAS_CNN, name="keras-cnn")

    assert {"Conv", "MaxPool", "GlobalAveragePool", "MatMul", "Softmax"} <= operators
    cost = version["metadata"]["cost"]
    assert cost["assumed_input"] == {"images": [325, 32, 32, 3]}
    assert cost["rows_bound_by"] == "max_predict_elements"


def test_the_other_usual_operators_are_admitted_and_estimated(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = dl_models.export(dl_models.ZOO, "torchscript", tmp_path / "zoo.onnx")
    model = check_onnx(path.read_bytes())
    inputs = dl_models.ZOO.example()

    cost = estimate_onnx_cost(model, CostLimits())
    (answer,) = ort.InferenceSession(str(path)).run(None, inputs)

    operators = {node.op_type for node in model.graph.node}
    assert {"GRU", "RNN", "ConvTranspose", "InstanceNormalization", "Erf"} <= operators
    assert {"Resize", "Einsum"} <= operators
    assert cost.max_rows is not None
    assert cost.max_rows >= 1
    np.testing.assert_allclose(answer, dl_models.reference(dl_models.ZOO, inputs), rtol=1e-4)
