"""What an ONNX graph may contain to be served: bounded operators and shapes fixed by the input.

docs/architecture/security-notes.md, cost that depends on the input: the upload probe runs a model once on zeros, which
proves that it loads, not what it costs. A 0.5 KB graph whose `Loop` trip count was
`Cast(ReduceMax(X))` held a worker for 27.5 s on `[[1e7, 0, 0, 0]]`; one whose
`ConstantOfShape` size came from X grew a worker to 4.3 GiB. So a served graph keeps one
invariant, checked at upload and on every load: the shape of every tensor, and the number of
iterations of every loop, is a function of the input's *shape* and the model's constants, never
of the input's values. Then a call's cost is fixed by the request's shape, which is bounded:
modelyard.serving.onnx_cost estimates it at upload and on every load, and refuses graphs over
the budgets; the run budget and memory cap of modelyard.serving.runtimes.onnx still bound
every call.

Three rules give it:
- Operators whose output sizes or iteration counts come from values are refused by name: `Loop`
  and `If` (data-driven iteration and control flow), `NonZero`, `Compress`, `Unique`,
  `NonMaxSuppression`, `StringSplit` and the sequence operators (outputs sized by values).
- Every other operator needs a cost rule (modelyard.serving.onnx_cost.COST_RULES: what the
  tabular converters, torch.onnx.export and tf2onnx emit for tabular models, CNNs, RNNs and
  transformer encoders). The cost estimate, not a list, then decides: a graph is served if one
  row of its largest input fits the budgets.
- Every input that sets a shape or a count (`ConstantOfShape`'s shape, `Tile`'s repeats,
  `Range`'s bounds, `Reshape`'s shape, `Slice`'s starts, `TopK`'s k, `Resize`'s scales and
  sizes, `Expand`'s shape, reduction axes...) is static: an initializer, a `Constant`, a
  `Shape`/`Size` of a tensor, or computed only from such values. `Scan` is allowed: it iterates
  over a tensor's leading dimension, a shape, and its body is held to the same rules; so are
  `LSTM`, `GRU` and `RNN`, which iterate over the sequence dimension.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from modelyard.serving.formats import ModelRejected
from modelyard.serving.onnx_cost import COST_RULES

ALLOWED_OPERATORS: Final[Mapping[str, frozenset[str]]] = {
    domain: frozenset(rules) for domain, rules in COST_RULES.items()
}
# Refused by name whatever the estimator could say: their cost follows from input values.
DATA_DRIVEN_OPERATORS: Final = frozenset(
    {
        *("Loop", "If", "NonZero", "Compress", "Unique", "NonMaxSuppression", "StringSplit"),
        *("SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert"),
        *("SequenceLength", "SequenceMap", "SplitToSequence", "ConcatFromSequence"),
        *("Optional", "OptionalGetElement", "OptionalHasElement", "ImageDecoder"),
    }
)

_REDUCTIONS: Final = frozenset(op for op in ALLOWED_OPERATORS[""] if op.startswith("Reduce"))
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
    "Resize": (2, 3),  # scales, sizes
    "Upsample": (1,),  # scales
    "CenterCropPad": (1, 2),  # shape, axes
    "CumSum": (1,),  # axis
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
    """Refuse data-driven operators, operators without a cost rule, and value-driven shapes.

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
        if node.op_type in DATA_DRIVEN_OPERATORS:
            raise ModelRejected(
                f"model refused: ONNX operator '{_short(node.op_type)}'{_node_name(node)} is not "
                f"supported ({_WHY})"
            )
        allowed = ALLOWED_OPERATORS.get(node.domain, frozenset())
        if node.op_type not in allowed:
            raise ModelRejected(
                f"model refused: ONNX operator '{_short(node.op_type)}'{_node_name(node)} is not "
                "supported (no bound on its cost is known; served graphs may use what the "
                "scikit-learn, XGBoost, LightGBM, PyTorch and TensorFlow converters emit for "
                "tabular models, CNNs, RNNs and transformer encoders)"
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


__all__ = ["ALLOWED_OPERATORS", "DATA_DRIVEN_OPERATORS", "SHAPE_INPUTS", "check_onnx_graph"]
