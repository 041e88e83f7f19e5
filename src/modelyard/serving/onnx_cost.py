"""What one request to an ONNX graph costs: FLOPs and peak memory at the largest input it admits.

The graph rules (modelyard.serving.onnx_graph) make every shape a function of the input's shape
and the model's constants; this module turns that into numbers and bounds them. The input is set
to the largest one a request may carry (declared dimensions as they are; dynamic ones at their
bounds, see `CostLimits`), every tensor's shape is inferred node by node (ONNX's own shape
inference, fed the values of the small tensors that shapes are computed from), and each node is
charged by a rule of its operator: multiply-adds for Conv, Gemm, MatMul, recurrent and attention
operators, the elements it reads or writes for the rest. Memory is the model's weights plus the
largest set of intermediate tensors alive at once, each freed after its last reader (what ONNX
Runtime's planner does too). An operator without a rule, or a tensor whose size inference cannot
tell, is refused: what cannot be bounded is not served.

Cost grows with the rows of a request, so the estimate also gives the most rows one call may
carry within the budgets: at least one row must fit (else the graph is refused, with the
figures), and a call with more rows than `OnnxCost.max_rows` is refused before it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from modelyard.serving.formats import ModelRejected

# Tensors this small have their values computed while shapes are inferred (shape vectors, axes,
# counts); larger ones only their shapes.
VALUE_LIMIT: Final = 4096
# ...by nodes that cost at most this (never a subgraph's body: only shape arithmetic is run).
VALUE_FLOPS_LIMIT: Final = 10**6
# Bytes counted for an element whose size the dtype does not give (strings), and for each
# input element of a non-tensor output (ZipMap's list of dictionaries).
STRING_BYTES: Final = 64
MAP_BYTES_PER_ELEMENT: Final = 64
_NAME_LIMIT: Final = 80
DEFAULT_MAX_ROWS: Final = 10_000
DEFAULT_MAX_ELEMENTS: Final = 1_000_000
DEFAULT_DYNAMIC_DIM: Final = 512
DEFAULT_MAX_FLOPS: Final = 200 * 10**9
DEFAULT_MAX_MEMORY_BYTES: Final = 2 * 1024**3


@dataclass(frozen=True)
class CostLimits:
    """The largest request a served ONNX model must answer, and what it may cost.

    A dynamic first dimension is the rows of a request: at most `max_rows` (the request limit
    `max_batch_rows`), and as many as fit `max_elements` input values over all inputs
    (`max_predict_elements`). Any other dynamic dimension (a sequence length, an image side)
    is taken at `dynamic_dim`, lowered if one row would not fit `max_elements` otherwise.
    """

    max_rows: int = DEFAULT_MAX_ROWS
    max_elements: int = DEFAULT_MAX_ELEMENTS
    dynamic_dim: int = DEFAULT_DYNAMIC_DIM
    max_flops: int = DEFAULT_MAX_FLOPS
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES

    def as_json(self) -> dict[str, int]:
        """Return the limits as JSON (the probe request carries them to the child)."""
        return {
            "max_rows": self.max_rows,
            "max_elements": self.max_elements,
            "dynamic_dim": self.dynamic_dim,
            "max_flops": self.max_flops,
            "max_memory_bytes": self.max_memory_bytes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CostLimits:
        """Read limits written by `as_json`."""
        return cls(**{name: int(data[name]) for name in cls().as_json()})


@dataclass(frozen=True)
class GraphCost:
    """FLOPs and memory of one run of a graph at given input shapes."""

    flops: int
    weights_bytes: int
    activations_bytes: int

    @property
    def peak_memory_bytes(self) -> int:
        """Weights plus the largest set of tensors alive at once."""
        return self.weights_bytes + self.activations_bytes


@dataclass(frozen=True)
class OnnxCost:
    """The estimate stored on a version: the cost of the largest call, and what it assumed."""

    flops: int
    peak_memory_bytes: int
    weights_bytes: int
    # Most rows one call may carry (None: the graph has no dynamic rows dimension).
    max_rows: int | None
    # Each input's shape in the call estimated.
    assumed_input: dict[str, list[int]]
    # The cost of one row (the smallest call), and what bounded max_rows.
    flops_per_row: int
    rows_bound_by: str | None = None

    def as_json(self) -> dict[str, Any]:
        """Return the estimate as JSON (the version's `metadata["cost"]`)."""
        return {
            "flops": self.flops,
            "peak_memory_bytes": self.peak_memory_bytes,
            "weights_bytes": self.weights_bytes,
            "max_rows": self.max_rows,
            "rows_bound_by": self.rows_bound_by,
            "flops_per_row": self.flops_per_row,
            "assumed_input": self.assumed_input,
        }


def _short(text: str) -> str:
    return text if len(text) <= _NAME_LIMIT else text[:_NAME_LIMIT] + "..."


def _where(node: Any) -> str:
    name = f" (node '{_short(node.name)}')" if node.name else ""
    return f"ONNX operator '{_short(node.op_type)}'{name}"


def _figure(value: float) -> str:
    """Write a count the way people read it: 3.6e9 -> '3.6 G'."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g} "


def _bytes(value: float) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{int(value)} B"


# --- what each operator costs ---------------------------------------------------------------


@dataclass
class _Node:
    """What a cost rule sees of one node: its attributes and its tensors' shapes."""

    proto: Any
    inputs: list[tuple[int, ...] | None]
    outputs: list[tuple[int, ...] | None]
    attributes: dict[str, Any] = field(default_factory=dict)

    def input(self, position: int) -> tuple[int, ...]:
        shape = self.inputs[position] if position < len(self.inputs) else None
        return shape if shape is not None else ()

    def output(self, position: int = 0) -> tuple[int, ...]:
        shape = self.outputs[position] if position < len(self.outputs) else None
        return shape if shape is not None else ()


def _size(shape: Sequence[int] | None) -> int:
    return math.prod(shape) if shape else (0 if shape is None else 1)


def _out(node: _Node) -> int:
    return sum(_size(shape) for shape in node.outputs if shape is not None)


def _in(node: _Node) -> int:
    return sum(_size(shape) for shape in node.inputs if shape is not None)


def _elementwise(factor: int) -> Callable[[_Node], int]:
    """Each output element costs `factor` operations."""
    return lambda node: factor * _out(node)


def _read(factor: int) -> Callable[[_Node], int]:
    """Each input element costs `factor` operations (reductions, normalisations)."""
    return lambda node: factor * max(_in(node), _out(node))


def _conv(node: _Node) -> int:
    weight = node.input(1)  # [C_out, C_in / group, k...]
    per_output = _size(weight[1:]) if len(weight) > 1 else 1
    return 2 * _size(node.output()) * per_output


def _conv_transpose(node: _Node) -> int:
    weight = node.input(1)  # [C_in, C_out / group, k...]
    per_input = _size(weight[1:]) if len(weight) > 1 else 1
    return 2 * _size(node.input(0)) * per_input


def _matmul(node: _Node) -> int:
    a = node.input(0)
    inner = a[-1] if a else 1
    return 2 * _size(node.output()) * inner


def _gemm(node: _Node) -> int:
    a = node.input(0)
    inner = (a[0] if node.attributes.get("transA") else a[-1]) if a else 1
    return 2 * _size(node.output()) * inner + _size(node.output())


def _pool(node: _Node) -> int:
    kernel = node.attributes.get("kernel_shape") or [1]
    return _size(node.output()) * math.prod(int(k) for k in kernel)


def _recurrent(gates: int) -> Callable[[_Node], int]:
    """LSTM (4 gates), GRU (3), RNN (1): per step and direction, gates x hidden x (input + hidden)."""

    def cost(node: _Node) -> int:
        x = node.input(0)  # [seq, batch, input] (layout 0) or [batch, seq, input]
        w = node.input(1)  # [directions, gates * hidden, input]
        if len(x) != 3 or len(w) != 3:
            return 0
        steps_times_batch = x[0] * x[1]
        directions, rows, width = w
        hidden = rows // gates
        per_step = 2 * rows * (width + hidden) + 8 * rows
        return steps_times_batch * directions * per_step

    return cost


def _attention_shape(node: _Node) -> tuple[int, int]:
    """Return (scores, head size) of an ONNX Attention node: batch x heads x seq_q x seq_kv."""
    q, k = node.input(0), node.input(1)
    if len(q) == 4 and len(k) == 4:  # [batch, heads, seq, head_size]
        batch, heads, seq_q, size = q
        seq_kv = k[2]
    elif len(q) == 3 and len(k) == 3:  # [batch, seq, hidden]
        batch, seq_q, size = q
        heads = int(node.attributes.get("q_num_heads") or 1)
        size //= max(heads, 1)
        seq_kv = k[1]
    else:
        return 0, 0
    return batch * heads * seq_q * seq_kv, size


def _attention_scores(node: _Node) -> int:
    return _attention_shape(node)[0]


def _attention(node: _Node) -> int:
    """ONNX Attention (opset 23): Q K^T and the weighted sum of V, plus the softmax."""
    scores, size = _attention_shape(node)
    return 2 * scores * size * 2 + 5 * scores


def _einsum(node: _Node) -> int:
    """Twice the product of every index's size: the loop nest a naive einsum runs."""
    equation = str(node.attributes.get("equation", "")).replace(" ", "")
    terms = equation.split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, node.inputs, strict=False):
        if shape is None or "..." in term:
            return 2 * _in(node) * max(_out(node), 1)
        for letter, size in zip(term, shape, strict=False):
            sizes[letter] = size
    return 2 * math.prod(sizes.values()) if sizes else _out(node)


def _topk(node: _Node) -> int:
    x = node.input(0)
    return _size(x) * max(1, math.ceil(math.log2(max(x) + 1))) if x else 0


def _trees(node: _Node) -> int:
    """A row walks at most every node of every tree (TreeEnsemble*: the node list's length)."""
    rows = node.input(0)[0] if node.input(0) else 1
    count = 0
    for name in ("nodes_treeids", "nodes_featureids", "nodes_modes", "leaf_targetids"):
        value = node.attributes.get(name)
        if value is not None:
            count = max(count, len(value))
    return rows * max(count, 1)


def _svm(node: _Node) -> int:
    x = node.input(0)
    rows, width = (x[0], x[-1]) if len(x) >= 2 else (1, _size(x))
    vectors = node.attributes.get("vectors_per_class") or []
    support = sum(int(v) for v in vectors) or len(node.attributes.get("coefficients") or [1])
    return 2 * rows * max(support, 1) * max(width, 1)


def _linear_ml(node: _Node) -> int:
    x = node.input(0)
    coefficients = node.attributes.get("coefficients") or []
    rows = x[0] if x else 1
    return 2 * rows * max(len(coefficients), _size(x[1:]) if x else 1)


_ELEMENTWISE: Final = (
    *("Abs", "Acos", "Acosh", "Add", "And", "Asin", "Asinh", "Atan", "Atanh", "BitShift"),
    *("BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Ceil", "Celu", "Clip", "Cos"),
    *("Cosh", "Div", "Elu", "Equal", "Erf", "Exp", "Floor", "Gelu", "Greater", "GreaterOrEqual"),
    *("HardSigmoid", "HardSwish", "IsInf", "IsNaN", "LeakyRelu", "Less", "LessOrEqual", "Log"),
    *("Max", "Mean", "Min", "Mish", "Mod", "Mul", "Neg", "Not", "Or", "PRelu", "Pow"),
    *("Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh"),
    *("Softplus", "Softsign", "Sqrt", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Where"),
    *("Xor", "Swish"),
)
# Operators that move or produce data without arithmetic: charged one operation per element
# written (a copy still takes time).
_DATA: Final = (
    *("Cast", "CastLike", "Concat", "Constant", "ConstantOfShape", "DepthToSpace", "Dropout"),
    *("Expand", "EyeLike", "Flatten", "Gather", "GatherElements", "GatherND", "Identity"),
    *("OneHot", "Pad", "Range", "Reshape", "ReverseSequence", "ScatterElements", "ScatterND"),
    *("Shape", "Size", "Slice", "SpaceToDepth", "Split", "Squeeze", "Tile", "Transpose"),
    *("Trilu", "Unsqueeze", "CenterCropPad"),
)
_REDUCTIONS: Final = (
    *("ArgMax", "ArgMin", "CumSum", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp"),
    *("ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare"),
    *("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"),
)
_NORMALISATIONS: Final = (
    *("BatchNormalization", "GroupNormalization", "InstanceNormalization"),
    *("LayerNormalization", "LpNormalization", "MeanVarianceNormalization", "RMSNormalization"),
    *("Softmax", "LogSoftmax", "Hardmax", "LRN"),
)
_ML_ELEMENTWISE: Final = (
    *("ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer"),
    *("FeatureVectorizer", "Imputer", "LabelEncoder", "Normalizer", "OneHotEncoder", "Scaler"),
    "ZipMap",
)

# Every operator a served graph may use, by domain, with what one run of it costs. The list is
# the union of what skl2onnx, onnxmltools, torch.onnx.export (both exporters) and tf2onnx emit
# for tabular models, CNNs, RNNs and transformer encoders; all are bounded by their shapes.
_STANDARD: Final[Mapping[str, Callable[[_Node], int]]] = {
    **dict.fromkeys(_ELEMENTWISE, _elementwise(1)),
    **dict.fromkeys(_DATA, _elementwise(1)),
    **dict.fromkeys(_REDUCTIONS, _read(1)),
    **dict.fromkeys(_NORMALISATIONS, _read(8)),
    "Conv": _conv,
    "ConvInteger": _conv,
    "QLinearConv": _conv,
    "ConvTranspose": _conv_transpose,
    "MatMul": _matmul,
    "MatMulInteger": _matmul,
    "QLinearMatMul": _matmul,
    "Gemm": _gemm,
    "Einsum": _einsum,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "Resize": _elementwise(16),
    "Upsample": _elementwise(16),
    "LSTM": _recurrent(4),
    "GRU": _recurrent(3),
    "RNN": _recurrent(1),
    "Attention": _attention,
    "TopK": _topk,
    "Scan": _elementwise(1),  # plus its body, counted once per iteration
    "QuantizeLinear": _elementwise(2),
    "DequantizeLinear": _elementwise(2),
    "DynamicQuantizeLinear": _elementwise(4),
    "Det": _read(8),
}
_ML_RULES: Final[Mapping[str, Callable[[_Node], int]]] = {
    **dict.fromkeys(_ML_ELEMENTWISE, _read(1)),
    "LinearClassifier": _linear_ml,
    "LinearRegressor": _linear_ml,
    "SVMClassifier": _svm,
    "SVMRegressor": _svm,
    "TreeEnsemble": _trees,
    "TreeEnsembleClassifier": _trees,
    "TreeEnsembleRegressor": _trees,
}
COST_RULES: Final[Mapping[str, Mapping[str, Callable[[_Node], int]]]] = {
    "": _STANDARD,
    "ai.onnx": _STANDARD,
    "ai.onnx.ml": _ML_RULES,
}


# --- shapes and values, node by node ---------------------------------------------------------


@dataclass
class _Tensor:
    """What is known of one named value while walking the graph."""

    elem_type: int
    shape: tuple[int, ...] | None  # None: not a tensor (a sequence or a map)
    value: np.ndarray[Any, Any] | None = None
    nbytes: int = 0


def _element_bytes(elem_type: int) -> int:
    from onnx import TensorProto, helper

    if elem_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return STRING_BYTES
    try:
        return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        return 8


def _tensor_bytes(elem_type: int, shape: tuple[int, ...] | None) -> int:
    return _size(shape) * _element_bytes(elem_type) if shape is not None else 0


def _type_proto(tensor: _Tensor) -> Any:
    from onnx import helper

    return helper.make_tensor_type_proto(tensor.elem_type, list(tensor.shape or ()))


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import AttributeProto, helper

    values: dict[str, Any] = {}
    for attribute in node.attribute:
        if attribute.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS, AttributeProto.TENSOR):
            continue
        values[attribute.name] = helper.get_attribute_value(attribute)
        if isinstance(values[attribute.name], bytes):
            values[attribute.name] = values[attribute.name].decode("utf-8", "replace")
    return values


class _Walk:
    """Infers every tensor's shape through one graph, charging each node its cost."""

    def __init__(self, opsets: Mapping[str, int], ir_version: int) -> None:
        from onnx import defs, helper

        self.opsets = dict(opsets)
        self.opset_protos = [helper.make_opsetid(d, v) for d, v in self.opsets.items()]
        self.ir_version = ir_version
        self._schemas: dict[tuple[str, str], Any] = {}
        self._defs = defs

    def schema(self, node: Any) -> Any:
        key = (node.domain, node.op_type)
        if key not in self._schemas:
            domain = "" if node.domain == "ai.onnx" else node.domain
            version = self.opsets.get(node.domain, self.opsets.get(domain, 1))
            try:
                self._schemas[key] = self._defs.get_schema(node.op_type, version, domain)
            except self._defs.SchemaError as exc:
                raise ModelRejected(
                    f"model refused: {_where(node)} is not an operator of ONNX opset {version}"
                ) from exc
        return self._schemas[key]

    def graph(
        self, graph: Any, inputs: Mapping[str, _Tensor], outer: Mapping[str, _Tensor]
    ) -> tuple[int, int, dict[str, _Tensor]]:
        """Walk `graph` with its inputs set; return (flops, peak live bytes, its outputs)."""
        from onnx import numpy_helper

        known: dict[str, _Tensor] = dict(outer)
        for tensor in graph.initializer:
            shape = tuple(int(d) for d in tensor.dims)
            value = numpy_helper.to_array(tensor) if _size(shape) <= VALUE_LIMIT else None
            known[tensor.name] = _Tensor(tensor.data_type, shape, value)
        known.update(inputs)
        # The last node reading each name: a tensor is freed once it has been read for the last
        # time (graph outputs live to the end).
        last_read: dict[str, int] = {}
        for index, node in enumerate(graph.node):
            for name in (*node.input, *_captured(node)):
                last_read[name] = index
        keep = {output.name for output in graph.output}
        live = {name: t.nbytes for name, t in inputs.items()}
        current = peak = sum(live.values())
        flops = 0
        for index, node in enumerate(graph.node):
            node_flops, produced, inner_peak = self.node(node, known)
            flops += node_flops
            for name, tensor in produced.items():
                known[name] = tensor
                if name not in live:
                    live[name] = tensor.nbytes
                    current += tensor.nbytes
            peak = max(peak, current + inner_peak)
            for name in (*node.input, *node.output):
                if name in live and last_read.get(name, -1) <= index and name not in keep:
                    current -= live.pop(name)
        outputs = {}
        for output in graph.output:
            if output.name not in known:
                raise ModelRejected(f"model refused: graph output '{_short(output.name)}' unset")
            outputs[output.name] = known[output.name]
        return flops, peak, outputs

    def node(self, node: Any, known: Mapping[str, _Tensor]) -> tuple[int, dict[str, _Tensor], int]:
        """Infer one node's outputs; return (its flops, its outputs, peak bytes inside it)."""
        rules = COST_RULES.get(node.domain, {})
        rule = rules.get(node.op_type)
        if rule is None:
            raise ModelRejected(
                f"model refused: {_where(node)} is not supported (no bound on its cost is known)"
            )
        inputs: list[_Tensor | None] = []
        for name in node.input:
            if not name:
                inputs.append(None)
                continue
            if name not in known:
                raise ModelRejected(
                    f"model refused: {_where(node)} reads '{_short(name)}', defined nowhere before"
                )
            inputs.append(known[name])
        inner_flops = inner_peak = 0
        if node.op_type == "Scan":
            produced, inner_flops, inner_peak = self.scan(node, inputs, known)
        else:
            produced = self.infer(node, inputs)
        shapes_in = [t.shape if t is not None else None for t in inputs]
        shapes_out = [produced[name].shape if name in produced else None for name in node.output]
        described = _Node(node, shapes_in, shapes_out, _attributes(node))
        flops = rule(described) + inner_flops
        if node.op_type == "Attention":
            # A fused attention holds its score matrix while it runs: seq_q x seq_kv per head.
            inner_peak = max(inner_peak, 4 * _attention_scores(described))
        if node.op_type != "Scan" and flops <= VALUE_FLOPS_LIMIT:
            # Shape arithmetic: small values whose computing costs next to nothing.
            self.compute_values(node, inputs, produced)
        return flops, produced, inner_peak

    def infer(self, node: Any, inputs: Sequence[_Tensor | None]) -> dict[str, _Tensor]:
        from onnx import TensorProto, numpy_helper, shape_inference

        schema = self.schema(node)
        types = {}
        data = {}
        for name, tensor in zip(node.input, inputs, strict=True):
            if tensor is None:
                continue
            if tensor.shape is None:
                raise ModelRejected(
                    f"model refused: {_where(node)} takes a sequence or map input, which only "
                    "ZipMap's output may be"
                )
            types[name] = _type_proto(tensor)
            if tensor.value is not None:
                data[name] = numpy_helper.from_array(tensor.value, name)
        try:
            inferred = shape_inference.infer_node_outputs(
                schema,
                node,
                types,
                data,
                opset_imports=self.opset_protos,
                ir_version=self.ir_version,
            )
        except Exception as exc:  # onnx raises InferenceError and others, with no common base
            raise ModelRejected(
                f"model refused: {_where(node)}: its output shapes cannot be inferred "
                f"({type(exc).__name__})"
            ) from exc
        produced: dict[str, _Tensor] = {}
        for name in node.output:
            if not name:
                continue
            kind = inferred.get(name)
            if kind is not None and kind.HasField("tensor_type"):
                tensor_type = kind.tensor_type
                dims = [
                    d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
                ]
                has_shape = tensor_type.HasField("shape")
                if node.domain == "ai.onnx.ml" and (not has_shape or None in dims):
                    position = list(node.output).index(name)
                    dims = list(_ml_shape(node, inputs, dims if has_shape else None, position))
                    has_shape = True
                if not has_shape or any(d is None or d < 0 for d in dims):
                    raise ModelRejected(
                        f"model refused: {_where(node)}: the size of its output '{_short(name)}' "
                        "does not follow from the input's shape and the model's constants, so "
                        "its cost cannot be bounded"
                    )
                shape = tuple(int(d) for d in dims if d is not None)
                elem = tensor_type.elem_type or TensorProto.FLOAT
                produced[name] = _Tensor(elem, shape, nbytes=_tensor_bytes(elem, shape))
            elif kind is not None and node.domain == "ai.onnx.ml" and node.op_type == "ZipMap":
                # A list of {class: probability} per row: as large as its input, and then some.
                size = _size(inputs[0].shape if inputs[0] is not None else None)
                produced[name] = _Tensor(
                    TensorProto.UNDEFINED, None, nbytes=size * MAP_BYTES_PER_ELEMENT
                )
            else:
                raise ModelRejected(
                    f"model refused: {_where(node)}: the type of its output '{_short(name)}' "
                    "cannot be inferred, so its cost cannot be bounded"
                )
        return produced

    def compute_values(
        self, node: Any, inputs: Sequence[_Tensor | None], produced: dict[str, _Tensor]
    ) -> None:
        """Give small outputs of nodes over known values their values (shape arithmetic)."""
        if any(t.shape is None or _size(t.shape) > VALUE_LIMIT for t in produced.values()):
            return
        if node.op_type in {"Shape", "Size"} and inputs and inputs[0] is not None:
            shape = inputs[0].shape or ()
            if node.op_type == "Size":
                value = np.array(_size(shape), dtype=np.int64)
            else:
                attributes = _attributes(node)
                start, end = attributes.get("start", 0), attributes.get("end")
                value = np.array(shape[start:end], dtype=np.int64)
            produced[node.output[0]].value = value
            return
        if node.domain not in {"", "ai.onnx"} or any(
            t is not None and t.value is None for t in inputs
        ):
            return
        from onnx.reference import ReferenceEvaluator

        feeds = {name: t.value for name, t in zip(node.input, inputs, strict=True) if t is not None}
        try:
            evaluator = ReferenceEvaluator(node, opsets={"": self.opsets.get("", 17)})
            results = evaluator.run(None, feeds)
        except Exception:
            return
        for name, result in zip(node.output, results, strict=False):
            if name in produced and result is not None:
                array = np.asarray(result)
                if array.shape == produced[name].shape:
                    produced[name].value = array

    def scan(
        self, node: Any, inputs: Sequence[_Tensor | None], known: Mapping[str, _Tensor]
    ) -> tuple[dict[str, _Tensor], int, int]:
        """A Scan runs its body once per slice of its scan inputs: cost times iterations."""
        from onnx import helper

        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        body = attributes["body"]
        present: list[_Tensor] = []
        for tensor in inputs:
            if tensor is None or tensor.shape is None:
                raise ModelRejected(f"model refused: {_where(node)} takes an input of unknown size")
            present.append(tensor)
        scans = int(attributes["num_scan_inputs"])
        states = len(present) - scans
        axes = [int(a) for a in attributes.get("scan_input_axes") or [0] * scans]
        iterations = 1
        body_inputs: dict[str, _Tensor] = {}
        for index, (value_info, tensor) in enumerate(zip(body.input, present, strict=False)):
            shape = tensor.shape or ()
            if index >= states:
                axis = axes[index - states] % max(len(shape), 1)
                iterations = shape[axis] if shape else 1
                shape = shape[:axis] + shape[axis + 1 :]
            body_inputs[value_info.name] = _Tensor(
                tensor.elem_type, shape, nbytes=_tensor_bytes(tensor.elem_type, shape)
            )
        flops, peak, outputs = self.graph(body, body_inputs, known)
        produced: dict[str, _Tensor] = {}
        body_outputs = [outputs[o.name] for o in body.output]
        for position, name in enumerate(node.output):
            if not name or position >= len(body_outputs):
                continue
            out = body_outputs[position]
            shape = out.shape or ()
            if position >= states:
                shape = (iterations, *shape)
            produced[name] = _Tensor(
                out.elem_type, shape, nbytes=_tensor_bytes(out.elem_type, shape)
            )
        return produced, flops * iterations, peak


_ML_SAME_SHAPE: Final = frozenset(
    {"Binarizer", "CategoryMapper", "Imputer", "LabelEncoder", "Normalizer", "Scaler"}
)
_ML_CLASSIFIERS: Final = frozenset({"LinearClassifier", "SVMClassifier", "TreeEnsembleClassifier"})
_ML_REGRESSORS: Final = frozenset(
    {"LinearRegressor", "SVMRegressor", "TreeEnsembleRegressor", "TreeEnsemble"}
)


def _ml_shape(
    node: Any, inputs: Sequence[_Tensor | None], dims: list[int | None] | None, position: int
) -> tuple[int, ...]:
    """Bound an ONNX-ML output whose shape inference leaves dimensions open.

    Their outputs are per row: the input's shape (scalers, encoders), [rows] (a classifier's
    labels) or [rows, width], where width is at most the larger of the input's row width and
    the labels, targets or keys the node's attributes list.
    """
    first = inputs[0].shape if inputs and inputs[0] is not None else None
    rows = first[0] if first else 1
    widths = [_size(first[1:]) if first else 1]
    if node.op_type == "ArrayFeatureExtractor" and len(inputs) > 1 and inputs[1] is not None:
        widths = [_size(inputs[1].shape)]
    for name, value in _attributes(node).items():
        if name.startswith(("classlabels", "keys_", "cats_", "target")) and isinstance(value, list):
            widths.append(len(value))
        elif name in {"n_targets", "targets"} and isinstance(value, int):
            widths.append(value)
    attributes = _attributes(node)
    labels = [
        len(value)
        for name, value in attributes.items()
        if name.startswith("classlabels") and isinstance(value, list) and value
    ]
    if node.op_type in _ML_CLASSIFIERS and labels:
        widths = labels  # one score per class
    elif node.op_type in _ML_REGRESSORS:
        widths = [int(attributes.get("n_targets") or attributes.get("targets") or 1)]
    width = max(widths)
    if dims is None:
        if node.op_type in _ML_SAME_SHAPE and first is not None:
            return first
        if node.op_type in _ML_CLASSIFIERS and position == 0:
            return (rows,)
        return (rows, width)
    bounded = [rows if axis == 0 else width for axis in range(len(dims))]
    return tuple(d if d is not None else b for d, b in zip(dims, bounded, strict=True))


def _captured(node: Any) -> Iterable[str]:
    """Names a node's subgraphs read from the enclosing scope (they must stay alive)."""
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                yield from inner.input
                yield from _captured(inner)


# --- the estimate -------------------------------------------------------------------------


# The name given to a dynamic first dimension: the rows of a request, shared by all inputs.
ROWS: Final = "<rows>"


@dataclass(frozen=True)
class _Input:
    name: str
    elem_type: int
    dims: list[int | str]  # an int, or the name of a dynamic dimension


def _graph_inputs(model: Any) -> list[_Input]:
    initializers = {t.name for t in model.graph.initializer}
    found = []
    for number, value in enumerate(model.graph.input):
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            raise ModelRejected(f"model refused: input '{_short(value.name)}' is not a tensor")
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            raise ModelRejected(
                f"model refused: input '{_short(value.name)}' declares no shape (its rank "
                "bounds what a request may send)"
            )
        dims: list[int | str] = []
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(int(dim.dim_value))
            elif axis == 0:
                dims.append(ROWS)  # every input's dynamic first dimension: the request's rows
            elif dim.HasField("dim_param") and dim.dim_param:
                dims.append(dim.dim_param)
            else:
                dims.append(f"?{number}.{axis}")  # unnamed: a dimension of its own
        found.append(_Input(value.name, tensor_type.elem_type, dims))
    return found


def _rows_symbol(inputs: Sequence[_Input]) -> str | None:
    """The rows dimension, when an input's first dimension is dynamic."""
    return ROWS if any(i.dims and i.dims[0] == ROWS for i in inputs) else None


def _dynamic_sizes(
    inputs: Sequence[_Input], rows: str | None, limits: CostLimits
) -> dict[str, int]:
    """Size every dynamic dimension but rows: at the bound, lowered until one row fits."""
    symbols = sorted({d for i in inputs for d in i.dims if isinstance(d, str) and d != rows})
    size = limits.dynamic_dim
    while True:
        sizes = dict.fromkeys(symbols, size)
        if size <= 1 or _row_elements(inputs, rows, sizes) <= limits.max_elements:
            return sizes
        size = max(1, size * 3 // 4)


def _row_elements(inputs: Sequence[_Input], rows: str | None, sizes: Mapping[str, int]) -> int:
    total = 0
    for graph_input in inputs:
        total += math.prod(
            1 if d == rows else (d if isinstance(d, int) else sizes[d]) for d in graph_input.dims
        )
    return total


def _shapes(
    inputs: Sequence[_Input], rows: str | None, sizes: Mapping[str, int], count: int
) -> dict[str, tuple[int, ...]]:
    return {
        i.name: tuple(
            count if d == rows else (d if isinstance(d, int) else sizes[d]) for d in i.dims
        )
        for i in inputs
    }


def _weights_bytes(model: Any) -> int:
    total = 0
    for graph in _graphs(model.graph):
        for tensor in graph.initializer:
            total += _tensor_bytes(tensor.data_type, tuple(int(d) for d in tensor.dims))
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    t = attribute.t
                    total += _tensor_bytes(t.data_type, tuple(int(d) for d in t.dims))
                if node.domain == "ai.onnx.ml":
                    # ONNX-ML operators keep their coefficients and trees in attribute lists.
                    total += 4 * len(attribute.floats) + 8 * len(attribute.ints)
                    total += sum(len(text) for text in attribute.strings)
    return total


def _graphs(graph: Any) -> Iterable[Any]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def graph_cost(model: Any, shapes: Mapping[str, tuple[int, ...]]) -> GraphCost:
    """Estimate one run of `model` (an onnx.ModelProto) on inputs of the given shapes.

    Raises:
        ModelRejected: an operator has no cost rule, or a tensor's size cannot be inferred.
    """
    opsets = {o.domain: int(o.version) for o in model.opset_import}
    walk = _Walk(opsets, int(model.ir_version) or 8)
    inputs = {}
    for graph_input in _graph_inputs(model):
        shape = shapes[graph_input.name]
        inputs[graph_input.name] = _Tensor(
            graph_input.elem_type, shape, nbytes=_tensor_bytes(graph_input.elem_type, shape)
        )
    flops, peak, _ = walk.graph(model.graph, inputs, {})
    return GraphCost(flops=flops, weights_bytes=_weights_bytes(model), activations_bytes=peak)


def estimate_onnx_cost(model: Any, limits: CostLimits) -> OnnxCost:
    """Estimate the largest call `model` admits within `limits`; refuse it if one row is over.

    Raises:
        ModelRejected: one row already costs more than the budgets (the message gives the
            figures), or the cost cannot be bounded (an operator without a rule, a size that
            does not follow from shapes).
    """
    inputs = _graph_inputs(model)
    rows = _rows_symbol(inputs)
    sizes = _dynamic_sizes(inputs, rows, limits)
    one = graph_cost(model, _shapes(inputs, rows, sizes, 1))
    _check_budget(one, limits, _shapes(inputs, rows, sizes, 1))
    if rows is None:
        return _result(one, None, None, _shapes(inputs, rows, sizes, 1), one)
    per_row_elements = max(_row_elements(inputs, rows, sizes), 1)
    bounds = {
        "max_batch_rows": limits.max_rows,
        "max_predict_elements": max(1, limits.max_elements // per_row_elements),
    }
    two = graph_cost(model, _shapes(inputs, rows, sizes, 2))
    # Cost is affine in rows for the graphs served (rows never meet each other); two points
    # give its slope, and the budgets the rows they leave room for.
    flops_slope = max(two.flops - one.flops, 0)
    memory_slope = max(two.peak_memory_bytes - one.peak_memory_bytes, 0)
    if flops_slope:
        bounds["onnx_max_flops_per_request"] = 1 + (limits.max_flops - one.flops) // flops_slope
    if memory_slope:
        bounds["onnx_max_memory_bytes_per_request"] = (
            1 + (limits.max_memory_bytes - one.peak_memory_bytes) // memory_slope
        )
    bound_by = min(bounds, key=lambda name: bounds[name])
    count = max(1, bounds[bound_by])
    largest = graph_cost(model, _shapes(inputs, rows, sizes, count))
    # Not affine after all (it should be): halve the rows until the budgets hold.
    while count > 1 and _over_budget(largest, limits):
        count //= 2
        largest = graph_cost(model, _shapes(inputs, rows, sizes, count))
    return _result(largest, count, bound_by, _shapes(inputs, rows, sizes, count), one)


def _over_budget(cost: GraphCost, limits: CostLimits) -> bool:
    return cost.flops > limits.max_flops or cost.peak_memory_bytes > limits.max_memory_bytes


def _check_budget(
    cost: GraphCost, limits: CostLimits, shapes: Mapping[str, tuple[int, ...]]
) -> None:
    if not _over_budget(cost, limits):
        return
    shown = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
    raise ModelRejected(
        f"model refused: one row ({_short(shown)}) costs about {_figure(cost.flops)}FLOPs and "
        f"{_bytes(cost.peak_memory_bytes)} of memory ({_bytes(cost.weights_bytes)} of weights), "
        f"over this server's budget of {_figure(limits.max_flops)}FLOPs and "
        f"{_bytes(limits.max_memory_bytes)} per request"
    )


def _result(
    cost: GraphCost,
    rows: int | None,
    bound_by: str | None,
    shapes: Mapping[str, tuple[int, ...]],
    one: GraphCost,
) -> OnnxCost:
    return OnnxCost(
        flops=cost.flops,
        peak_memory_bytes=cost.peak_memory_bytes,
        weights_bytes=cost.weights_bytes,
        max_rows=rows,
        assumed_input={name: list(shape) for name, shape in shapes.items()},
        flops_per_row=one.flops,
        rows_bound_by=bound_by,
    )


__all__ = ["COST_RULES", "CostLimits", "GraphCost", "OnnxCost", "estimate_onnx_cost", "graph_cost"]
