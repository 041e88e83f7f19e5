"""The ONNX cost estimate: FLOPs and peak memory per call, rows bounded by budgets, refusals."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelyard.serving.formats import ModelRejected
from modelyard.serving.loader import check_onnx, load_onnx
from modelyard.serving.onnx_cost import CostLimits, estimate_onnx_cost, graph_cost
from modelyard.serving.runtimes.base import InferenceLimitExceeded
from modelyard.serving.runtimes.onnx import OnnxRuntime
from tests.serving import hostile


def _model(
    nodes: list[Any],
    inputs: list[Any],
    initializers: list[Any] | None = None,
    opset: int = 17,
) -> Any:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=initializers or [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _conv_model() -> Any:
    """X[N, 3, 8, 8] -> Conv(4 filters of 3x3, pad 1) -> Relu -> Y[N, 4, 8, 8]."""
    weight = numpy_helper.from_array(np.zeros((4, 3, 3, 3), dtype=np.float32), "W")
    return _model(
        [
            helper.make_node("Conv", ["X", "W"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["Y"]),
        ],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [weight],
    )


def test_conv_flops_are_two_per_multiply_add() -> None:
    cost = graph_cost(_conv_model(), {"X": (2, 3, 8, 8)})

    outputs = 2 * 4 * 8 * 8
    assert cost.flops == 2 * outputs * 3 * 3 * 3 + outputs  # the conv, then one op per Relu
    assert cost.weights_bytes == 4 * 3 * 3 * 3 * 4


def test_peak_memory_frees_a_tensor_after_its_last_reader() -> None:
    # A chain of three element-wise nodes: at most an input and an output are alive at once.
    model = _model(
        [
            helper.make_node("Relu", ["X"], ["a"]),
            helper.make_node("Neg", ["a"], ["b"]),
            helper.make_node("Abs", ["b"], ["Y"]),
        ],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 1000])],
    )

    cost = graph_cost(model, {"X": (10, 1000)})

    assert cost.activations_bytes == 2 * 10 * 1000 * 4


def test_matmul_counts_the_inner_dimension() -> None:
    weight = numpy_helper.from_array(np.zeros((16, 5), dtype=np.float32), "W")
    model = _model(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 16])],
        [weight],
    )

    assert graph_cost(model, {"X": (3, 16)}).flops == 2 * 3 * 5 * 16


def test_rows_are_bounded_by_the_request_limits() -> None:
    cost = estimate_onnx_cost(_conv_model(), CostLimits(max_rows=10_000, max_elements=19_200))

    # 192 input values a row: 100 rows fit 19,200 values.
    assert cost.max_rows == 100
    assert cost.rows_bound_by == "max_predict_elements"
    assert cost.assumed_input == {"X": [100, 3, 8, 8]}


def test_rows_are_bounded_by_the_flops_budget() -> None:
    per_row = graph_cost(_conv_model(), {"X": (1, 3, 8, 8)}).flops

    cost = estimate_onnx_cost(_conv_model(), CostLimits(max_flops=per_row * 7 + 1))

    assert cost.max_rows == 7
    assert cost.rows_bound_by == "onnx_max_flops_per_request"
    assert cost.flops <= per_row * 7 + 1
    assert cost.flops_per_row == per_row


def test_one_row_over_the_budget_is_refused_with_the_figures() -> None:
    with pytest.raises(ModelRejected) as info:
        estimate_onnx_cost(_conv_model(), CostLimits(max_flops=10_000))

    detail = info.value.detail
    assert "one row (X [1, 3, 8, 8]) costs about 14.1 kFLOPs" in detail
    assert "over this server's budget of 10 kFLOPs" in detail


def test_dynamic_dimensions_other_than_rows_take_the_bound() -> None:
    model = _model(
        [helper.make_node("Relu", ["X"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "sequence", 8])],
    )

    cost = estimate_onnx_cost(model, CostLimits(dynamic_dim=100, max_elements=8_000))

    assert cost.assumed_input == {"X": [10, 100, 8]}


def test_dynamic_dimensions_shrink_until_one_row_fits_the_element_limit() -> None:
    model = _model(
        [helper.make_node("Relu", ["X"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "h", "w"])],
    )

    cost = estimate_onnx_cost(model, CostLimits(dynamic_dim=512, max_elements=10_000))

    rows, height, width = cost.assumed_input["X"]
    assert height == width
    assert height * width <= 10_000
    assert rows * height * width <= 10_000


def test_an_operator_without_a_cost_rule_is_refused_by_name() -> None:
    model = _model(
        [helper.make_node("RandomNormalLike", ["X"], ["Y"], name="noise")],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 4])],
    )

    with pytest.raises(
        ModelRejected, match=r"ONNX operator 'RandomNormalLike' \(node 'noise'\) is not supported"
    ):
        check_onnx(model.SerializeToString())


@pytest.mark.parametrize("op", ["NonZero", "Unique", "Compress"])
def test_operators_sized_by_values_are_refused_by_name(op: str) -> None:
    inputs = ["X", "X"] if op == "Compress" else ["X"]
    model = _model(
        [helper.make_node(op, inputs, ["Y"], name="sized")],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 4])],
    )

    with pytest.raises(ModelRejected, match=rf"ONNX operator '{op}' \(node 'sized'\) is not"):
        check_onnx(model.SerializeToString())


def test_resize_to_sizes_taken_from_values_is_refused() -> None:
    model = _model(
        [
            helper.make_node("ReduceMax", ["X"], ["m"], keepdims=0),
            helper.make_node("Cast", ["m"], ["side"], to=TensorProto.INT64),
            helper.make_node("Concat", ["fixed", "side", "side"], ["sizes"], axis=0),
            helper.make_node("Resize", ["X", "", "", "sizes"], ["Y"], name="grow"),
        ],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor("fixed", TensorProto.INT64, [2], [1, 1])],
        opset=18,
    )

    with pytest.raises(
        ModelRejected, match=r"'Resize' \(node 'grow'\) takes a shape or count from input values"
    ):
        check_onnx(model.SerializeToString())


def test_resize_by_constant_scales_is_estimated() -> None:
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    model = _model(
        [helper.make_node("Resize", ["X", "", "scales"], ["Y"], mode="linear")],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [scales],
    )
    check_onnx(model.SerializeToString())

    cost = graph_cost(model, {"X": (1, 3, 16, 16)})

    assert cost.activations_bytes == (3 * 16 * 16 + 3 * 32 * 32) * 4


def test_a_shape_computed_from_the_input_shape_is_followed() -> None:
    # Y = Reshape(X, [-1] + Shape(X)[1:] products): a flatten written with shape arithmetic.
    model = _model(
        [
            helper.make_node("Shape", ["X"], ["dims"]),
            helper.make_node("Slice", ["dims", "one", "end"], ["tail"]),
            helper.make_node("ReduceProd", ["tail"], ["width"], keepdims=1),
            helper.make_node("Concat", ["minus_one", "width"], ["target"], axis=0),
            helper.make_node("Reshape", ["X", "target"], ["Y"]),
        ],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 3, 5])],
        [
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
            helper.make_tensor("end", TensorProto.INT64, [1], [3]),
            helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1]),
        ],
    )
    check_onnx(model.SerializeToString())

    cost = estimate_onnx_cost(model, CostLimits(max_rows=50))

    assert cost.max_rows == 50
    assert cost.flops == 50 * 15 + 9  # the reshape's copy, and the shape arithmetic


def test_onnx_runtime_refuses_more_rows_than_its_cost_allows() -> None:
    weight = numpy_helper.from_array(np.ones((4, 1), dtype=np.float32), "W")
    model = _model(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 4])],
        [weight],
    )
    data = model.SerializeToString()
    runtime = OnnxRuntime(
        load_onnx(data), data, nbytes=len(data), cost_limits=CostLimits(max_rows=3)
    )

    predictions, _ = runtime.predict(np.ones((3, 4), dtype=np.float32))

    assert predictions.tolist() == [4.0, 4.0, 4.0]
    with pytest.raises(InferenceLimitExceeded, match="at most 3 rows per call"):
        runtime.predict(np.ones((4, 4), dtype=np.float32))


def test_external_data_is_refused_saying_how_to_export_inline(tmp_path: Any) -> None:
    data = hostile.onnx_external_data(tmp_path, tmp_path / "marker").read_bytes()

    with pytest.raises(ModelRejected, match=r"torch\.onnx\.export\(\.\.\., external_data=False\)"):
        check_onnx(data)


def test_a_huge_tensor_of_constant_shape_is_refused_before_it_runs() -> None:
    # Legal under the graph rules (the shape is a constant), and 40 GB on any input: the probe's
    # one run would fail on memory, the estimate refuses it without running it.
    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [1.0])
    model = _model(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["big"], value=fill),
            helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
            helper.make_node("Add", ["X", "s"], ["Y"]),
        ],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor("shape", TensorProto.INT64, [1], [10**10])],
    )

    with pytest.raises(ModelRejected, match=r"costs about .* and 37.3 GiB of memory"):
        estimate_onnx_cost(model, CostLimits())


def test_fused_attention_counts_its_score_matrix() -> None:
    model = _model(
        [helper.make_node("Attention", ["Q", "K", "V"], ["Y"])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", 4, "seq", 16])
            for name in "QKV"
        ],
        opset=23,
    )
    model.ir_version = 10
    check_onnx(model.SerializeToString())

    cost = graph_cost(model, dict.fromkeys("QKV", (1, 4, 32, 16)))

    scores = 4 * 32 * 32
    assert cost.flops == 2 * scores * 16 * 2 + 5 * scores
    tensors = 4 * (1 * 4 * 32 * 16) * 4  # Q, K, V and Y
    assert cost.activations_bytes == tensors + 4 * scores
