"""What an ONNX graph may contain to be served: allowlisted operators and shapes fixed by the input.

SECURITY.md, cost that depends on the input: the upload probe runs a model once on zeros, which
proves that it loads, not what it costs. A 0.5 KB graph whose `Loop` trip count was
`Cast(ReduceMax(X))` held a worker for 27.5 s on `[[1e7, 0, 0, 0]]`; one whose
`ConstantOfShape` size came from X grew a worker to 4.3 GiB. So a served graph keeps one
invariant, checked at upload and on every load: the shape of every tensor, and the number of
iterations of every loop, is a function of the input's *shape* and the model's constants, never
of the input's values. Then a call's cost is fixed by the request's shape, which is bounded, and
what remains (big constants times many rows) is bounded by the run budget and memory cap of
modelyard.serving.runtimes.onnx.

Two rules give it:
- Operators come from an allowlist: what skl2onnx and onnxmltools emit for the supported models
  (linear models, trees and ensembles, SVMs, naive Bayes, neighbours, scalers, pipelines, ZipMap)
  and plain element-wise math. No `Loop` or `If` (data-driven iteration and control flow), no
  `NonZero`, `Compress` or `Unique` (outputs sized by values), no image operators.
- Every input that sets a shape or a count (`ConstantOfShape`'s shape, `Tile`'s repeats,
  `Range`'s bounds, `Reshape`'s shape, `Slice`'s starts, `TopK`'s k, reduction axes...) is
  static: an initializer, a `Constant`, a `Shape`/`Size` of a tensor, or computed only from such
  values. `Scan` is allowed: it iterates over a tensor's leading dimension, a shape, and its body
  is held to the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from modelyard.serving.formats import ModelRejected

_MATH: Final = frozenset(
    {
        # Element-wise arithmetic, comparison and logic.
        *("Abs", "Acos", "Acosh", "Add", "And", "Asin", "Asinh", "Atan", "Atanh", "Ceil"),
        *("Clip", "Cos", "Cosh", "Div", "Equal", "Erf", "Exp", "Floor", "Greater"),
        *("GreaterOrEqual", "IsInf", "IsNaN", "Less", "LessOrEqual", "Log", "Max", "Mean", "Min"),
        *("Mod", "Mul", "Neg", "Not", "Or", "Pow", "Reciprocal", "Round", "Sign", "Sin", "Sinh"),
        *("Sqrt", "Sub", "Sum", "Tan", "Tanh", "Where", "Xor"),
        # Activations (MLPs, calibrated and boosted scores).
        *("Sigmoid", "Relu", "LeakyRelu", "Elu", "Selu", "Softplus", "Softsign", "HardSigmoid"),
        *("Softmax", "LogSoftmax", "Hardmax", "LpNormalization"),
        # Reductions and products.
        *("ArgMax", "ArgMin", "CumSum", "MatMul", "Gemm"),
        *("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean"),
        *("ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare"),
        # Moving and reshaping data.
        *("Cast", "CastLike", "Concat", "Constant", "ConstantOfShape", "Expand", "Flatten"),
        *("Gather", "GatherElements", "Identity", "OneHot", "Pad", "Range", "Reshape", "Scan"),
        *("Shape", "Size", "Slice", "Split", "Squeeze", "Tile", "TopK", "Transpose", "Unsqueeze"),
    }
)
_ML: Final = frozenset(
    {
        *("ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer"),
        *("FeatureVectorizer", "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor"),
        *("Normalizer", "OneHotEncoder", "SVMClassifier", "SVMRegressor", "Scaler"),
        *("TreeEnsemble", "TreeEnsembleClassifier", "TreeEnsembleRegressor", "ZipMap"),
    }
)
ALLOWED_OPERATORS: Final[Mapping[str, frozenset[str]]] = {
    "": _MATH,
    "ai.onnx": _MATH,
    "ai.onnx.ml": _ML,
}

_REDUCTIONS: Final = frozenset(op for op in _MATH if op.startswith("Reduce"))
# Positions of the inputs that set an output's shape or a count, by operator (ONNX operator
# specification, latest opsets; older opsets take these as attributes, which are constants).
SHAPE_INPUTS: Final[Mapping[str, tuple[int, ...]]] = {
    "ConstantOfShape": (0,),
    "Expand": (1,),
    "Tile": (1,),
    "Range": (0, 1, 2),
    "Reshape": (1,),
    "Pad": (1, 3),
    "Slice": (1, 2, 3, 4),
    "TopK": (1,),
    "OneHot": (1,),
    "Split": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    **dict.fromkeys(_REDUCTIONS, (1,)),
}
# Their outputs describe a tensor's shape, not its values.
_SHAPE_OF: Final = frozenset({"Shape", "Size"})
_WHY: Final = "the shapes and iteration counts of a served model must not depend on input values"
_NAME_LIMIT: Final = 80


def _short(text: str) -> str:
    return text if len(text) <= _NAME_LIMIT else text[:_NAME_LIMIT] + "..."


def _node_name(node: Any) -> str:
    return f" (node '{_short(node.name)}')" if node.name else ""


def _subgraphs(node: Any) -> Iterable[Any]:
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def check_onnx_graph(graph: Any) -> None:
    """Refuse operators off the allowlist and shapes or counts computed from input values.

    Raises:
        ModelRejected: the message names the operator (and node) at fault.
    """
    _check_graph(graph, outer_static=frozenset())


def _check_graph(graph: Any, *, outer_static: frozenset[str]) -> None:
    """Check one graph; `outer_static` are the static names of the enclosing scopes."""
    # A graph input that is also an initializer is a default the caller may override.
    inputs = {value.name for value in graph.input}
    static = set(outer_static)
    static.update(t.name for t in graph.initializer if t.name not in inputs)
    static.update(t.values.name for t in graph.sparse_initializer if t.values.name not in inputs)
    # Names a subgraph defines hide the same names of the scopes around it.
    static.difference_update(inputs)
    for node in graph.node:
        allowed = ALLOWED_OPERATORS.get(node.domain, frozenset())
        if node.op_type not in allowed:
            raise ModelRejected(
                f"model refused: ONNX operator '{_short(node.op_type)}'{_node_name(node)} is not "
                "supported (served graphs may use the operators that scikit-learn, XGBoost and "
                f"LightGBM converters emit; {_WHY})"
            )
        for position in SHAPE_INPUTS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position]:
                name = node.input[position]
                if name not in static:
                    raise ModelRejected(
                        f"model refused: ONNX operator '{node.op_type}'{_node_name(node)} takes "
                        f"a shape or count from input values (input {position}, "
                        f"'{_short(name)}'); {_WHY}"
                    )
        for subgraph in _subgraphs(node):
            _check_graph(subgraph, outer_static=frozenset(static))
        inputs_static = all(not name or name in static for name in node.input)
        if node.op_type in _SHAPE_OF or (inputs_static and not any(_subgraphs(node))):
            static.update(name for name in node.output if name)
        else:
            static.difference_update(node.output)


__all__ = ["ALLOWED_OPERATORS", "SHAPE_INPUTS", "check_onnx_graph"]
