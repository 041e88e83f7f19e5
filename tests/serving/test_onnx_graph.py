"""ONNX graph rules: converter output passes, shapes or trip counts taken from values do not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper
from sklearn.ensemble import AdaBoostClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from modelyard.serving.formats import ModelRejected
from modelyard.serving.loader import check_onnx
from tests.serving import legit

# Estimators whose skl2onnx graphs use what the rules must let through: Scan (KNN),
# ConstantOfShape(Shape(X)) (AdaBoost, PolynomialFeatures), tree ensembles, ZipMap.
CONVERTED: list[tuple[str, Callable[[], Any]]] = [
    ("knn", lambda: KNeighborsClassifier(3)),
    ("adaboost", lambda: AdaBoostClassifier(n_estimators=3, random_state=0)),
    (
        "poly_pipeline",
        lambda: make_pipeline(StandardScaler(), PolynomialFeatures(2), LogisticRegression()),
    ),
    ("forest", lambda: RandomForestRegressor(n_estimators=3, random_state=0)),
]


@pytest.mark.parametrize(("name", "make"), CONVERTED, ids=[name for name, _ in CONVERTED])
def test_skl2onnx_graphs_pass_the_rules(name: str, make: Callable[[], Any]) -> None:
    from skl2onnx import to_onnx

    x, y = legit.iris()
    model = make().fit(x, y)
    onx = to_onnx(model, x[:1].astype(np.float32))
    check_onnx(onx.SerializeToString())


def _model(nodes: list[Any], initializers: list[Any], inputs: list[Any] | None = None) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs or [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def test_if_is_refused_by_name() -> None:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    data = _model(
        [
            helper.make_node("ReduceMax", ["X"], ["m"], keepdims=0),
            helper.make_node("Cast", ["m"], ["c"], to=TensorProto.BOOL),
            helper.make_node("If", ["c"], ["Y"], then_branch=branch, else_branch=branch),
        ],
        [],
    )
    with pytest.raises(ModelRejected, match="ONNX operator 'If' is not supported"):
        check_onnx(data)


def test_shape_from_an_overridable_initializer_is_refused() -> None:
    # An initializer that is also a graph input is only a default: the caller may feed it.
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [4])
    data = _model(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["big"]),
            helper.make_node("Add", ["X", "big"], ["Y"]),
        ],
        [shape],
        inputs=[
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [1]),
        ],
    )
    with pytest.raises(ModelRejected, match="'ConstantOfShape' takes a shape or count"):
        check_onnx(data)


def test_shape_computed_from_constants_and_shapes_is_accepted() -> None:
    shape = helper.make_tensor("two", TensorProto.INT64, [1], [2])
    data = _model(
        [
            helper.make_node("Shape", ["X"], ["dims"]),
            helper.make_node("Mul", ["dims", "two"], ["doubled"]),
            helper.make_node("ConstantOfShape", ["doubled"], ["zeros"]),
            helper.make_node("ReduceSum", ["zeros"], ["Y"], keepdims=0),
        ],
        [shape],
    )
    check_onnx(data)
