"""Deep-learning test networks, built here with random weights and exported to ONNX (no download).

ResNet-18 (torchvision's architecture, written out: torchvision does not import beside the CPU
torch wheel the tests use), a small LSTM text classifier and a small transformer encoder, each
exported by both of torch's exporters (TorchScript, `dynamo=False`; torch.export, `dynamo=True`)
with a dynamic batch dimension, and a dynamic sequence length for the text models.

torch is imported only inside these functions: the server never imports it, and a test module
importing this one costs nothing until a network is built.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0
IMAGE = (3, 224, 224)
VOCAB = 1000
SEQUENCE = 16


def _torch() -> Any:
    import torch

    torch.manual_seed(SEED)
    return torch


def resnet18(num_classes: int = 1000) -> Any:
    """Return torchvision's ResNet-18 (BasicBlock, [2, 2, 2, 2]) with random weights, in eval."""
    torch = _torch()
    nn = torch.nn

    class BasicBlock(nn.Module):  # type: ignore[misc,name-defined]  # torch is untyped here
        expansion = 1

        def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

        def forward(self, x: Any) -> Any:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class ResNet(nn.Module):  # type: ignore[misc,name-defined]  # torch is untyped here
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            layers = []
            inplanes = 64
            for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                layers.append(
                    nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes))
                )
                inplanes = planes
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x: Any) -> Any:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    model = ResNet()
    # Random but not trivial batch-norm statistics, so inference-mode BN does real work.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def lstm_classifier(vocab: int = VOCAB, embed: int = 32, hidden: int = 64, classes: int = 3) -> Any:
    """Return an embedding + LSTM + linear text classifier over token ids [batch, sequence]."""
    torch = _torch()
    nn = torch.nn

    class LstmClassifier(nn.Module):  # type: ignore[misc,name-defined]  # torch is untyped here
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(vocab, embed)
            self.lstm = nn.LSTM(embed, hidden, batch_first=True)
            self.head = nn.Linear(hidden, classes)

        def forward(self, input_ids: Any) -> Any:
            output, _ = self.lstm(self.embedding(input_ids))
            return self.head(output[:, -1, :])

    return LstmClassifier().eval()


def transformer_encoder(
    vocab: int = VOCAB, d_model: int = 64, heads: int = 4, layers: int = 2, classes: int = 3
) -> Any:
    """Return a torch.nn.TransformerEncoder classifier over (input_ids, attention_mask)."""
    torch = _torch()
    nn = torch.nn

    class EncoderClassifier(nn.Module):  # type: ignore[misc,name-defined]  # torch is untyped here
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(vocab, d_model)
            self.position = nn.Embedding(512, d_model)
            layer = nn.TransformerEncoderLayer(
                d_model, heads, dim_feedforward=4 * d_model, batch_first=True, dropout=0.1
            )
            # Without the nested-tensor fast path: it is an inference shortcut ONNX cannot export.
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = nn.Linear(d_model, classes)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = self.embedding(input_ids) + self.position(positions)
            x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
            weights = attention_mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            return self.head(pooled)

    return EncoderClassifier().eval()


def operator_zoo() -> Any:
    """Return a small module using the operators the three networks do not: GRU, RNN,
    ConvTranspose, InstanceNormalization, GELU (Erf), bilinear Resize and Einsum."""
    torch = _torch()
    nn = torch.nn

    class Zoo(nn.Module):  # type: ignore[misc,name-defined]  # torch is untyped here
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(8, 16, batch_first=True, bidirectional=True)
            self.rnn = nn.RNN(32, 4, batch_first=True)
            self.up = nn.ConvTranspose2d(3, 2, 3, stride=2)
            self.norm = nn.InstanceNorm2d(2)
            self.gelu = nn.GELU()

        def forward(self, sequence: Any, images: Any) -> Any:
            states, _ = self.gru(sequence)
            steps, _ = self.rnn(states)
            maps = self.gelu(self.norm(self.up(images)))
            maps = nn.functional.interpolate(maps, scale_factor=2.0, mode="bilinear")
            energy = torch.einsum("bchw,bchw->b", maps, maps)
            return steps[:, -1, :].sum(-1) + energy

    return Zoo().eval()


@dataclass(frozen=True)
class Network:
    """A test network: how to build it, an example input, and its inputs' dynamic axes."""

    name: str
    build: Callable[[], Any]
    example: Callable[[], dict[str, np.ndarray[Any, Any]]]
    dynamic: dict[str, dict[int, str]]
    outputs: tuple[str, ...] = ("logits",)
    # Dynamic axes for the TorchScript exporter when they differ: tracing bakes the sequence
    # length of nn.MultiheadAttention's reshapes into the graph (the dynamo exporter does not).
    torchscript_dynamic: dict[str, dict[int, str]] | None = None


def _image() -> dict[str, np.ndarray[Any, Any]]:
    return {"images": np.random.default_rng(SEED).standard_normal((2, *IMAGE), dtype=np.float32)}


def _tokens() -> dict[str, np.ndarray[Any, Any]]:
    return {"input_ids": np.random.default_rng(SEED).integers(0, VOCAB, (2, SEQUENCE))}


def _tokens_and_mask() -> dict[str, np.ndarray[Any, Any]]:
    ids = _tokens()["input_ids"]
    mask = np.ones_like(ids)
    mask[1, SEQUENCE // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _sequence_and_images() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(SEED)
    return {
        "sequence": rng.standard_normal((2, 5, 8), dtype=np.float32),
        "images": rng.standard_normal((2, 3, 8, 8), dtype=np.float32),
    }


BATCH = {0: "batch"}
BATCH_AND_SEQUENCE = {0: "batch", 1: "sequence"}
NETWORKS: dict[str, Network] = {
    network.name: network
    for network in (
        Network("resnet18", resnet18, _image, {"images": BATCH}),
        Network("lstm", lstm_classifier, _tokens, {"input_ids": BATCH_AND_SEQUENCE}),
        Network(
            "transformer",
            transformer_encoder,
            _tokens_and_mask,
            {"input_ids": BATCH_AND_SEQUENCE, "attention_mask": BATCH_AND_SEQUENCE},
            torchscript_dynamic={"input_ids": BATCH, "attention_mask": BATCH},
        ),
    )
}
EXPORTERS = ("torchscript", "dynamo")
# Exported by the TorchScript exporter only (torch.export specialises its batch dimension).
ZOO = Network(
    "zoo",
    operator_zoo,
    _sequence_and_images,
    {"sequence": BATCH_AND_SEQUENCE, "images": BATCH},
    outputs=("score",),
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and logs (pytest turns warnings into errors)."""
    loggers = [logging.getLogger(name) for name in ("torch", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export(network: Network, exporter: str, path: Path) -> Path:
    """Export `network` with random weights to an ONNX file at `path`, weights inline."""
    torch = _torch()
    module = network.build()
    example = network.example()
    args = tuple(torch.from_numpy(value) for value in example.values())
    names = list(example)
    # Without the fused inference fast path of TransformerEncoderLayer: TorchScript export has
    # no ONNX translation for it (aten::_transformer_encoder_layer_fwd).
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with _quiet(), torch.no_grad():
            _export(torch, module, args, names, network, exporter, path)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return path


def _export(
    torch: Any,
    module: Any,
    args: Any,
    names: list[str],
    network: Network,
    exporter: str,
    path: Path,
) -> None:
    if exporter == "torchscript":
        dynamic = network.torchscript_dynamic or network.dynamic
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=list(network.outputs),
            dynamic_axes={**dynamic, **{o: {0: "batch"} for o in network.outputs}},
            opset_version=17,
            dynamo=False,
        )
        return
    # By position: torch.export names a dict's keys after forward()'s parameters.
    dims = tuple(
        dict.fromkeys(network.dynamic.get(name, {}), torch.export.Dim.DYNAMIC) for name in names
    )
    program = torch.onnx.export(
        module,
        args,
        input_names=names,
        output_names=list(network.outputs),
        dynamic_shapes=dims,
        dynamo=True,
        external_data=False,
    )
    program.save(str(path), external_data=False)


def reference(network: Network, inputs: dict[str, np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    """Run the PyTorch module itself on `inputs` (the answer an export must reproduce)."""
    torch = _torch()
    module = network.build()
    with torch.no_grad():
        result = module(*(torch.from_numpy(value) for value in inputs.values()))
    return np.asarray(result.numpy())
