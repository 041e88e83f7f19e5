"""log_model of deep-learning models, as from a notebook, against a live server: PyTorch modules
exported to ONNX, checked against the module and recorded as `pytorch`; a Keras model's ONNX
file made by tf2onnx's command line (TensorFlow is no test dependency: the file is kept here).

The torch tests are skipped only where torch is not installed, never in CI.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from modelyard_client import AsyncClient, Client
from modelyard_client.cli import make_app
from modelyard_client.errors import ExportMismatch, Unprocessable
from tests.serving import dl_models
from tests.support.live import Login

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
# A Keras MLP (Dense 8 relu, Dense 3 softmax; seed 0) saved by keras 3.15 `model.export("saved")`
# from tensorflow-cpu 2.21 and converted by tf2onnx 1.17 as docs/guides/registry.md ("Supported formats") says:
#   python -m tf2onnx.convert --saved-model saved --output keras_mlp.onnx --opset 17
KERAS_MLP = Path(__file__).parents[1] / "serving" / "data" / "keras_mlp.onnx"
# What the Keras model itself answered for ROWS[:2] (model(rows, training=False)).
KERAS_ANSWERS = [
    [0.9760814309120178, 0.02182829938828945, 0.0020902862306684256],
    [0.996566116809845, 0.0034047451335936785, 2.9200489734648727e-05],
]


@pytest.fixture(scope="module")
def torch() -> Any:
    try:
        import torch
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("torch is not installed here (pip install 'modelyard-client[torch]')")
    torch.manual_seed(0)
    return torch


@pytest.fixture
def client(login: Login) -> Iterator[Client]:
    with Client(login.url, api_key=login.api_key) as client:
        yield client


def _mlp(torch: Any) -> Any:
    nn = torch.nn
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def test_a_pytorch_mlp_is_logged_as_pytorch_and_served_as_onnx(client: Client, torch: Any) -> None:
    module = _mlp(torch)

    # A batch of one, as a notebook has at hand: the export still takes any batch.
    version = client.log_model(module, "torch-mlp", input_example=torch.randn(1, 4))

    assert (version.framework, version.format) == ("pytorch", "onnx")
    assert version.feature_names == ["f0", "f1", "f2", "f3"]
    assert 0 <= version.metadata["export"]["max_difference"] <= 1e-4
    assert version.metadata["export"]["from"] == f"torch {torch.__version__}"
    with torch.no_grad():
        expected = module(torch.tensor(ROWS)).numpy()
    served = np.array(client.predict("torch-mlp", ROWS).predictions)
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)
    session = client.load_model("torch-mlp")
    assert [i.shape for i in session.get_inputs()] == [["batch", 4]]
    assert [o.shape for o in session.get_outputs()] == [["batch", 3]]
    assert [m.name for m in client.list_models(framework="pytorch").items] == ["torch-mlp"]
    assert client.list_models(framework="onnx").total == 0


def test_an_lstm_is_logged_with_its_token_ids_and_a_dynamic_sequence(
    client: Client, torch: Any, tmp_path: Path
) -> None:
    network = dl_models.NETWORKS["lstm"]
    module = network.build()
    ids = network.example()["input_ids"]

    version = client.log_model(
        module,
        "lstm",
        input_example=torch.from_numpy(ids),
        dynamic_axes={"input_ids": {1: "sequence"}},
        tags=["text"],
    )

    assert (version.framework, version.format, version.tags) == ("pytorch", "onnx", ["text"])
    assert version.metadata["cost"]["flops"] > 0
    path = client.download("lstm", version.version, dest=tmp_path / "lstm.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    assert (given.name, given.type, given.shape) == (
        "input_ids",
        "tensor(int64)",
        ["batch", "sequence"],
    )
    # Another batch size and a longer sequence than the example's, over REST (token ids as rows).
    longer = np.random.default_rng(1).integers(0, dl_models.VOCAB, (3, dl_models.SEQUENCE + 8))
    with torch.no_grad():
        expected = module(torch.from_numpy(longer)).numpy()
    served = client.predict("lstm", longer.tolist())
    assert served.predictions == []
    np.testing.assert_allclose(served.outputs["output"], expected, rtol=1e-4, atol=1e-4)
    by_name = client.predict("lstm", {"input_ids": torch.from_numpy(longer)})
    np.testing.assert_allclose(by_name.outputs["output"], expected, rtol=1e-4, atol=1e-4)
    (logits,) = session.run(None, {"input_ids": longer})
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


async def test_an_export_that_answers_otherwise_is_refused_before_any_upload(
    login: Login, torch: Any
) -> None:
    nn = torch.nn

    class Noisy(nn.Module):  # type: ignore[misc,name-defined]  # torch is untyped here
        """Adds uniform noise: ONNX Runtime draws other numbers than torch."""

        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x: Any) -> Any:
            y = self.linear(x)
            return y + torch.rand_like(y)

    async with AsyncClient(login.url, api_key=login.api_key) as sdk:
        with pytest.raises(ExportMismatch, match=r"output 'output' .* differs .* by up to") as e:
            await sdk.log_model(Noisy().eval(), "noisy", input_example=torch.randn(8, 4))
        assert e.value.output == "output"
        assert 1e-4 < e.value.difference < 1.0
        assert "nothing was uploaded" in str(e.value)

        # Dropout in training mode: as random, and the error says what to do.
        dropout = nn.Sequential(nn.Linear(4, 32), nn.Dropout(0.5), nn.Linear(32, 2))
        with pytest.raises(ExportMismatch, match=r"call module\.eval\(\)"):
            await sdk.log_model(dropout, "dropout", input_example=torch.randn(8, 4))
        assert (await sdk.list_models()).total == 0


def test_a_keras_model_converted_by_tf2onnx_is_recorded_as_keras(
    client: Client, iris_skops: Path
) -> None:
    client.upload(iris_skops, "iris")

    version = client.upload(KERAS_MLP, "keras-mlp", framework="keras")

    assert (version.framework, version.format) == ("keras", "onnx")
    served = client.predict("keras-mlp", ROWS[:2]).predictions
    np.testing.assert_allclose(np.array(served), KERAS_ANSWERS, rtol=1e-4, atol=1e-6)
    assert [m.name for m in client.list_models(framework="keras").items] == ["keras-mlp"]
    assert [m.name for m in client.list_models(framework="sklearn").items] == ["iris"]
    assert client.list_models(framework="tensorflow").total == 0
    # Only an ONNX file can be a PyTorch, TensorFlow or Keras model's export.
    with pytest.raises(Unprocessable, match="uploaded as its ONNX export"):
        client.upload(iris_skops, "iris", framework="pytorch")
    assert client.get_model("iris").version_count == 1
    assert version.metadata["cost"]["flops"] > 0


def test_a_transformer_logged_from_a_notebook_predicts_on_tensors_by_input_name(
    client: Client, login: Login, torch: Any, tmp_path: Path
) -> None:
    module = dl_models.NETWORKS["transformer"].build()
    example = {
        k: torch.from_numpy(v) for k, v in dl_models.NETWORKS["transformer"].example().items()
    }
    sequence = {1: "sequence"}
    client.log_model(
        module,
        "encoder",
        input_example=example,
        dynamic_axes={"input_ids": sequence, "attention_mask": sequence},
    )
    ids = np.random.default_rng(2).integers(0, dl_models.VOCAB, (3, dl_models.SEQUENCE + 4))
    mask = np.ones_like(ids)
    mask[2, 5:] = 0
    with torch.no_grad():
        expected = module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    # torch tensors, NumPy arrays and nested lists alike, by forward()'s parameter names.
    for given in (
        {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)},
        {"input_ids": ids, "attention_mask": mask.tolist()},
    ):
        result = client.predict("encoder", given)
        assert (result.model_name, result.version, result.predictions) == ("encoder", 1, [])
        assert list(result.outputs) == ["output"]
        assert isinstance(result.outputs["output"], np.ndarray)
        assert result.outputs["output"].shape == (3, 3)
        np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-4, atol=1e-4)

    # The server's reason, by input name, for what does not fit.
    with pytest.raises(Unprocessable, match="attention_mask"):
        client.predict("encoder", {"input_ids": ids})
    with pytest.raises(Unprocessable, match="attention_mask"):
        client.predict("encoder", {"input_ids": ids, "attention_mask": mask[:, :4]})

    # The command line reads the same tensors from a JSON file.
    tensors = tmp_path / "tensors.json"
    inputs = {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}
    tensors.write_text(json.dumps({"inputs": inputs}))
    env = {"MODELYARD_URL": login.url, "MODELYARD_API_KEY": login.api_key}
    app = make_app()
    by_json = CliRunner().invoke(app, ["predict", "encoder", "-i", str(tensors), "--json"], env=env)
    assert by_json.exit_code == 0, by_json.output
    answer = json.loads(by_json.stdout)
    np.testing.assert_allclose(answer["outputs"]["output"], expected, rtol=1e-4, atol=1e-4)
    table = CliRunner().invoke(app, ["predict", "encoder", "-i", str(tensors)], env=env)
    assert table.exit_code == 0, table.output
    assert "encoder v1" in table.stdout
    assert "3x3" in table.stdout


async def test_a_module_with_fixed_dimensions_past_the_batch_is_served_as_a_table(
    login: Login, torch: Any
) -> None:
    network = dl_models.NETWORKS["lstm"]
    module = network.build()
    ids = torch.from_numpy(network.example()["input_ids"])
    async with AsyncClient(login.url, api_key=login.api_key) as sdk:
        # No dynamic sequence: token ids of 16 are a table of 16 features.
        await sdk.log_model(module, "lstm", input_example=ids)

        # The tensor alone, or by its name, as for a one-input network.
        alone = await sdk.predict("lstm", ids)
        by_name = await sdk.predict("lstm", {"input_ids": ids[:1]})

    with torch.no_grad():
        expected = module(ids).numpy()
    assert alone.outputs == by_name.outputs == {}
    np.testing.assert_allclose(alone.predictions, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(by_name.predictions, expected[:1], rtol=1e-4, atol=1e-4)
