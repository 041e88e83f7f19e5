"""Deep-learning models to ONNX for `log_model`: a PyTorch module through `torch.onnx.export`,
a Keras model through tf2onnx, each run in ONNX Runtime and checked against the model itself
before anything is uploaded.

The server serves these models as their ONNX export and never imports torch or TensorFlow;
neither does the client unless such a model is logged (extras `[torch]` and `[tensorflow]`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from modelyard_client.errors import ConfigurationError, ExportMismatch

# Outputs match when |export - model| <= tolerance * (1 + |model|), element by element.
DEFAULT_TOLERANCE: Final = 1e-4
# The name of the dimension every input and output of an export has first.
BATCH: Final = "batch"
TF2ONNX_OPSET: Final = 17
# The exporters' own chatter (progress, deprecations of their internals): nothing a user can act on.
_NOISY_LOGGERS: Final = ("torch.onnx", "onnxscript", "onnx_ir", "tf2onnx", "tensorflow")


@dataclass(frozen=True, slots=True)
class Exported:
    path: Path
    framework: str
    metadata: dict[str, Any]


def is_torch_module(model: Any) -> bool:
    """Tell a `torch.nn.Module` without importing torch."""
    return any(
        cls.__name__ == "Module" and cls.__module__ == "torch.nn.modules.module"
        for cls in type(model).__mro__
    )


def is_keras_model(model: Any) -> bool:
    """Tell a Keras model (Keras 3, tf.keras or tf_keras) without importing TensorFlow."""
    return any(
        cls.__name__ == "Model" and cls.__module__.split(".")[0] in {"keras", "tf_keras"}
        for cls in type(model).__mro__
    )


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"{module} is not installed: pip install 'modelyard-client[{extra}]'"
        ) from exc


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- PyTorch ---------------------------------------------------------------------------------


def export_torch(
    module: Any,
    example: Any,
    folder: Path,
    *,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Exported:
    """Export a `torch.nn.Module` to `folder`/model.onnx (weights inline) with a dynamic batch
    dimension on every input and output, and check it answers as the module on `example`.

    `example`: a tensor (or array), or a dict of them by forward()'s parameter names.
    `dynamic_axes`: more dynamic dimensions by input, e.g. {"input_ids": {1: "sequence"}}.

    Raises:
        ConfigurationError: torch is missing, the example or the module's answer cannot be
            exported, or the export fixed the batch dimension.
        ExportMismatch: an output of the export differs from the module's beyond `tolerance`.
    """
    torch = _require("torch", "torch")
    _require("onnxscript", "torch")  # torch.onnx.export(dynamo=True) needs it
    inputs, named = _torch_inputs(torch, module, example)
    dims = _torch_dims(torch, inputs, dynamic_axes)
    with torch.no_grad():
        try:
            answer = module(**inputs) if named else module(*inputs.values())
        except Exception as exc:  # the user's forward(): any error means a wrong example
            raise ConfigurationError(
                f"the {type(module).__name__} failed on input_example: {_first_line(exc)}"
            ) from exc
    expected = _torch_outputs(torch, answer)
    args: tuple[Any, ...] = () if named else tuple(inputs.values())
    with _quiet(), torch.no_grad():
        try:
            program = torch.onnx.export(
                module,
                args,
                kwargs=inputs if named else None,
                output_names=list(expected),
                dynamic_shapes=dims if named else tuple(dims.values()),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many kinds; all mean "cannot export"
            raise ConfigurationError(
                f"torch.onnx.export could not export the {type(module).__name__}: "
                f"{_first_line(exc)}"
            ) from exc
    path = folder / "model.onnx"
    path.write_bytes(program.model_proto.SerializeToString())
    hint = (
        "the module is in training mode: call module.eval() before logging it"
        if getattr(module, "training", False)
        else "the forward pass may be random, or an operator exported inexactly"
    )
    feeds = {name: value.detach().cpu().numpy() for name, value in inputs.items()}
    difference = check_export(path, feeds, expected, tolerance=tolerance, hint=hint, extra="torch")
    return Exported(
        path,
        "pytorch",
        {"export": {"from": f"torch {torch.__version__}", "max_difference": difference}},
    )


def _torch_inputs(torch: Any, module: Any, example: Any) -> tuple[dict[str, Any], bool]:
    """Return the example as tensors by input name (a batch of one made two: an export
    specialises a dimension of size 1), and whether it goes to forward() by keyword."""
    if example is None:
        raise ConfigurationError("a PyTorch module is logged with an input_example")
    named = isinstance(example, Mapping)
    if named:
        items = [(str(name), value) for name, value in example.items()]
    else:
        parameters = list(inspect.signature(module.forward).parameters)
        items = [(parameters[0] if parameters else "input", example)]
    tensors = {}
    for name, value in items:
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if tensor.ndim == 0:
            raise ConfigurationError(f"input {name!r} of input_example has no batch dimension")
        tensors[name] = tensor
    if all(tensor.shape[0] == 1 for tensor in tensors.values()):
        tensors = {name: torch.cat([tensor, tensor]) for name, tensor in tensors.items()}
    return tensors, named


def _torch_dims(
    torch: Any, inputs: Mapping[str, Any], dynamic_axes: Mapping[str, Mapping[int, str]] | None
) -> dict[str, dict[int, Any]]:
    extra = dict(dynamic_axes or {})
    unknown = sorted(set(extra) - set(inputs))
    if unknown:
        raise ConfigurationError(
            f"dynamic_axes names {', '.join(unknown)}: the inputs are {', '.join(inputs)}"
        )
    made: dict[str, Any] = {}

    def dim(name: str) -> Any:
        if not name.isidentifier():
            raise ConfigurationError(f"dynamic axis name {name!r} is not an identifier")
        if name not in made:
            made[name] = torch.export.Dim(name)
        return made[name]

    return {
        name: {0: dim(BATCH)} | {int(axis): dim(str(n)) for axis, n in extra.get(name, {}).items()}
        for name in inputs
    }


def _torch_outputs(torch: Any, result: Any) -> dict[str, Any]:
    """The module's answer as arrays by output name: `output` for a tensor, `output_0`, ...
    for a tuple or list, the keys for a dict."""
    if isinstance(result, torch.Tensor):
        outputs = {"output": result}
    elif isinstance(result, Mapping):
        outputs = {str(key): value for key, value in result.items()}
    elif isinstance(result, tuple | list):
        outputs = {f"output_{i}": value for i, value in enumerate(result)}
    else:
        outputs = {}
    if not outputs or not all(isinstance(v, torch.Tensor) for v in outputs.values()):
        raise ConfigurationError(
            "forward() must answer a tensor, or a tuple, list or dict of tensors; got "
            f"{type(result).__name__}"
        )
    return {name: value.detach().cpu().numpy() for name, value in outputs.items()}


# --- Keras -----------------------------------------------------------------------------------


def export_keras(
    model: Any, example: Any, folder: Path, *, tolerance: float = DEFAULT_TOLERANCE
) -> Exported:
    """Convert a Keras model to `folder`/model.onnx with tf2onnx (a dynamic batch dimension on
    every input and output) and check it answers as the model on `example`.

    `example`: an array (or tensor), or a dict of them by the model's input names.

    Raises:
        ConfigurationError: TensorFlow or tf2onnx is missing, or the model cannot be converted.
        ExportMismatch: an output of the export differs from the model's beyond `tolerance`.
    """
    import numpy as np

    tf = _require("tensorflow", "tensorflow")
    tf2onnx = _require("tf2onnx", "tensorflow")
    if example is None:
        raise ConfigurationError("a Keras model is logged with an input_example")
    named = isinstance(example, Mapping)
    items = list(example.items()) if named else [("input", example)]
    inputs = {str(name): np.asarray(value) for name, value in items}
    if any(value.ndim == 0 for value in inputs.values()):
        raise ConfigurationError("input_example needs a batch dimension")
    if all(value.shape[0] == 1 for value in inputs.values()):
        inputs = {name: np.concatenate([value, value]) for name, value in inputs.items()}
    names = list(inputs)
    signature = [
        tf.TensorSpec((None, *value.shape[1:]), tf.as_dtype(value.dtype), name=name)
        for name, value in inputs.items()
    ]

    def call(*tensors: Any) -> Any:
        given = dict(zip(names, tensors, strict=True)) if named else tensors[0]
        return model(given, training=False)

    expected = _keras_outputs(call(*(tf.constant(value) for value in inputs.values())))
    with _quiet():
        try:
            proto, _ = tf2onnx.convert.from_function(
                tf.function(call),
                input_signature=signature,
                opset=TF2ONNX_OPSET,
            )
        except Exception as exc:  # the converter raises many kinds; all mean "cannot convert"
            raise ConfigurationError(
                f"tf2onnx could not convert the {type(model).__name__}: {_first_line(exc)}"
            ) from exc
    _name_outputs(proto, list(expected))
    path = folder / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    hint = "an operator may be converted inexactly"
    difference = check_export(
        path, inputs, expected, tolerance=tolerance, hint=hint, extra="tensorflow"
    )
    versions = f"tensorflow {tf.__version__}, tf2onnx {tf2onnx.__version__}"
    return Exported(path, "keras", {"export": {"from": versions, "max_difference": difference}})


def _name_outputs(proto: Any, names: list[str]) -> None:
    """Name tf2onnx's outputs (`Identity:0`, ...) as the model's, and their first dimension
    (`unk__7`, ...) `batch`, as torch.onnx.export does."""
    import onnx

    graph = proto.graph
    for output, name in zip(graph.output, names, strict=True):
        if output.name != name:
            graph.node.append(onnx.helper.make_node("Identity", [output.name], [name]))
            output.name = name
    for tensor in [*graph.input, *graph.output]:
        dims = tensor.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            dims[0].dim_param = BATCH


def _keras_outputs(result: Any) -> dict[str, Any]:
    import numpy as np

    if isinstance(result, Mapping):
        outputs = {str(key): value for key, value in result.items()}
    elif isinstance(result, tuple | list):
        outputs = {f"output_{i}": value for i, value in enumerate(result)}
    else:
        outputs = {"output": result}
    return {name: np.asarray(value) for name, value in outputs.items()}


# --- the check -------------------------------------------------------------------------------


def check_export(
    path: Path,
    inputs: Mapping[str, Any],
    expected: Mapping[str, Any],
    *,
    tolerance: float,
    hint: str,
    extra: str,
) -> float:
    """Run the ONNX file in ONNX Runtime on `inputs` and compare its outputs with `expected`
    (the model's own, by output name, in order); return the largest difference.

    Raises:
        ConfigurationError: the export fixed the batch dimension of an input or output, or
            ONNX Runtime cannot run it.
        ExportMismatch: an output differs beyond `tolerance`.
    """
    import numpy as np

    ort = _require("onnxruntime", extra)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's errors share no base class but Exception
        raise ConfigurationError(f"ONNX Runtime cannot load the export: {exc}") from exc
    for tensor in [*session.get_inputs(), *session.get_outputs()]:
        first = tensor.shape[0] if tensor.shape else None
        if not isinstance(first, str):
            raise ConfigurationError(
                f"the export fixed the batch dimension of {tensor.name!r} to {first}: the "
                "model's first dimension must be the batch"
            )
    given = session.get_inputs()
    feeds = (
        {given[0].name: next(iter(inputs.values()))}
        if len(given) == 1 == len(inputs)
        else {tensor.name: inputs[tensor.name] for tensor in given if tensor.name in inputs}
    )
    if len(feeds) != len(given):
        raise ConfigurationError(
            f"the export's inputs are {', '.join(t.name for t in given)}; the example's are "
            f"{', '.join(inputs)}"
        )
    results = session.run(None, feeds)
    if len(results) != len(expected):
        raise ConfigurationError(
            f"the export answers {len(results)} outputs, the model {len(expected)}"
        )
    worst = 0.0
    for (name, want), got in zip(expected.items(), results, strict=True):
        want, got = np.asarray(want), np.asarray(got)
        if want.shape != got.shape:
            raise ExportMismatch(
                f"output {name!r} of the ONNX export has shape {list(got.shape)}, the model's "
                f"{list(want.shape)}; nothing was uploaded",
                output=name,
                difference=float("inf"),
            )
        a, b = want.astype(np.float64), got.astype(np.float64)
        difference = np.abs(a - b)
        difference[np.isnan(a) & np.isnan(b)] = 0.0
        difference[np.isnan(a) != np.isnan(b)] = np.inf
        largest = float(difference.max(initial=0.0))
        if np.any(difference > tolerance * (1.0 + np.abs(np.nan_to_num(a)))):
            raise ExportMismatch(
                f"output {name!r} of the ONNX export differs from the model's by up to "
                f"{largest:.3g} (tolerance {tolerance:g}): {hint}; nothing was uploaded",
                output=name,
                difference=largest,
            )
        worst = max(worst, largest)
    return worst
