"""Builders of hostile model files: each writes one file into a folder and returns its path.

The code-execution payloads would create `marker` if they ran, so a test can assert that
nothing ran. HOSTILE_FILES lists every builder with the status and a substring of the reason
the probe must answer with; the registry's HTTP tests reuse it.
"""

from __future__ import annotations

import json
import operator
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from joblib.numpy_pickle_compat import NDArrayWrapper
from sklearn.linear_model import LogisticRegression

from tests.serving import legit


class Call:
    """Pickles as `func(*args)`: the building block of every code-execution payload."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __call__(self, *args: Any) -> Any:  # pickle insists that a reducer's callable is callable
        raise NotImplementedError

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def touch_code(marker: Path) -> str:
    """Python source that creates the marker file."""
    return f"open({str(marker)!r}, 'w').close()"


def _write_pickle(payload: Any, path: Path) -> Path:
    path.write_bytes(pickle.dumps(payload, protocol=4))
    return path


def joblib_os_system(tmp: Path, marker: Path) -> Path:
    """os.system (pickled as posix.system) touching the marker."""
    return _write_pickle(Call(os.system, f"touch {marker}"), tmp / "os_system.joblib")


def pickle_eval(tmp: Path, marker: Path) -> Path:
    """builtins.eval of code creating the marker."""
    return _write_pickle(Call(eval, touch_code(marker)), tmp / "eval.pkl")


def pickle_exec(tmp: Path, marker: Path) -> Path:
    """builtins.exec of code creating the marker."""
    return _write_pickle(Call(exec, touch_code(marker)), tmp / "exec.pkl")


def pickle_getattr_globals(tmp: Path, marker: Path) -> Path:
    """getattr on an allowlisted class up to its module's __builtins__, then exec."""
    init = Call(getattr, LogisticRegression, "__init__")
    module_globals = Call(getattr, init, "__globals__")
    builtins_dict = Call(Call(getattr, module_globals, "get"), "__builtins__")
    exec_fn = Call(Call(getattr, builtins_dict, "get"), "exec")
    return _write_pickle(Call(exec_fn, touch_code(marker)), tmp / "getattr.pkl")


def pickle_attrgetter(tmp: Path, marker: Path) -> Path:
    """operator.attrgetter/itemgetter from an allowlisted class to exec."""
    module_globals = Call(Call(operator.attrgetter, "__init__.__globals__"), LogisticRegression)
    builtins_dict = Call(Call(operator.itemgetter, "__builtins__"), module_globals)
    exec_fn = Call(Call(operator.itemgetter, "exec"), builtins_dict)
    return _write_pickle(Call(exec_fn, touch_code(marker)), tmp / "attrgetter.pkl")


def _short_unicode(text: str) -> bytes:
    data = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def pickle_dotted_name(tmp: Path, marker: Path) -> Path:
    """Protocol 4 STACK_GLOBAL of module sklearn._config, qualname os.system."""
    stream = (
        pickle.PROTO + b"\x04"
        + _short_unicode("sklearn._config")
        + _short_unicode("os.system")
        + pickle.STACK_GLOBAL
        + _short_unicode(f"touch {marker}")
        + pickle.TUPLE1
        + pickle.REDUCE
        + pickle.STOP
    )  # fmt: skip
    path = tmp / "dotted.pkl"
    path.write_bytes(stream)
    return path


def numpy_runstring(tmp: Path, marker: Path) -> Path:
    """numpy.testing._private.utils.runstring, which is exec."""
    from numpy.testing._private.utils import runstring

    return _write_pickle(Call(runstring, touch_code(marker), {}), tmp / "runstring.joblib")


def sklearn_testing_helper(tmp: Path, marker: Path) -> Path:
    """sklearn.utils._testing's helper that runs Python source in a subprocess."""
    from sklearn.utils._testing import assert_run_python_script_without_output

    payload = Call(assert_run_python_script_without_output, touch_code(marker))
    return _write_pickle(payload, tmp / "sklearn_testing.joblib")


def numpy_savetxt(tmp: Path, marker: Path) -> Path:
    """numpy.savetxt writing the marker file."""
    return _write_pickle(Call(np.savetxt, str(marker), np.zeros(1)), tmp / "savetxt.joblib")


def joblib_ndarray_wrapper(tmp: Path, marker: Path) -> Path:
    """joblib's legacy NDArrayWrapper: np.load(allow_pickle=True) of a side file."""
    side = tmp / "side.npy"
    side.write_bytes(pickle.dumps(Call(os.system, f"touch {marker}"), protocol=2))
    return _write_pickle(NDArrayWrapper(side.name, np.ndarray), tmp / "ndarray_wrapper.joblib")


def class_poisoning(tmp: Path, marker: Path) -> Path:
    """BUILD applied to the LogisticRegression class, replacing __setstate__ and predict."""
    del marker
    stream = (
        pickle.PROTO + b"\x04"
        + _short_unicode("sklearn.linear_model._logistic")
        + _short_unicode("LogisticRegression")
        + pickle.STACK_GLOBAL
        + pickle.NONE
        + pickle.EMPTY_DICT
        + _short_unicode("__setstate__") + pickle.NONE + pickle.SETITEM
        + _short_unicode("predict") + pickle.NONE + pickle.SETITEM
        + pickle.TUPLE2
        + pickle.BUILD
        + pickle.STOP
    )  # fmt: skip
    path = tmp / "poison.joblib"
    path.write_bytes(stream)
    return path


def _tree_state(tree: Any, mutate: Callable[[Any], None]) -> None:
    """Apply `mutate` to a fitted Tree's node array (through its pickled state)."""
    state = tree.__getstate__()
    state["nodes"] = state["nodes"].copy()
    mutate(state["nodes"])
    tree.__setstate__(state)


def _bad_child(nodes: Any) -> None:
    nodes["left_child"][0] = 10**6


def _cycle(nodes: Any) -> None:
    internal = np.flatnonzero(nodes["left_child"] != -1)
    nodes["left_child"][internal[-1]] = 0


def _bad_feature(nodes: Any) -> None:
    nodes["feature"][0] = 10**6


def _crafted_tree(
    mutate: Callable[[Any], None], fmt: str, forest: bool
) -> Callable[[Path, Path], Path]:
    def build(tmp: Path, marker: Path) -> Path:
        del marker
        model: Any = legit.iris_forest() if forest else legit.iris_tree()
        tree = model.estimators_[-1].tree_ if forest else model.tree_
        _tree_state(tree, mutate)
        name = f"{'forest' if forest else 'tree'}_{mutate.__name__.strip('_')}.{fmt}"
        if fmt == "skops":
            return legit.write_skops(model, tmp / name)
        return legit.write_joblib(model, tmp / name)

    return build


def _shared_child(nodes: Any) -> None:
    """Point the second-to-last internal node's left child at the last one's child (a DAG)."""
    internal = np.flatnonzero(nodes["left_child"] != -1)
    nodes["left_child"][internal[-2]] = nodes["left_child"][internal[-1]]


def chain_tree(path_nodes: int) -> Any:
    """A DecisionTreeRegressor rewritten into a chain `path_nodes` long (one feature).

    Every internal node sends x <= -1 left, to the next internal node, and anything else right,
    to a leaf: zeros (the probe's row) leave at the root, a row of -1e9 walks the whole chain.
    """
    from sklearn.tree import DecisionTreeRegressor

    inner = path_nodes - 1
    rng = np.random.default_rng(0)
    # inner + 1 distinct points with distinct targets grow exactly 2 * inner + 1 nodes.
    model = DecisionTreeRegressor(random_state=0).fit(
        rng.random((inner + 1, 1)), rng.random(inner + 1)
    )

    def chain(nodes: Any) -> None:
        assert len(nodes) == 2 * inner + 1
        nodes["left_child"][:] = -1
        nodes["right_child"][:] = -1
        nodes["feature"][:] = -2
        nodes["threshold"][:] = -2.0
        internal = np.arange(inner) * 2
        nodes["left_child"][internal] = internal + 2
        nodes["right_child"][internal] = internal + 1
        nodes["feature"][internal] = 0
        nodes["threshold"][internal] = -1.0

    _tree_state(model.tree_, chain)
    return model


def forest_sharing_one_deep_tree(tmp: Path, marker: Path) -> Path:
    """A forest listing one 4,001-node-deep tree object 250 times: pickle keeps it one object.

    Each row may walk 1,000,250 nodes, while the file holds 8,001.
    """
    del marker
    from sklearn.ensemble import RandomForestRegressor

    tree = chain_tree(4001)
    forest = RandomForestRegressor(n_estimators=1, random_state=0).fit(np.zeros((2, 1)), [0, 1])
    forest.estimators_ = [tree] * 250
    forest.n_estimators = 250
    return legit.write_joblib(forest, tmp / "shared_deep_forest.joblib")


def hgb_bad_child(tmp: Path, marker: Path) -> Path:
    """HistGradientBoosting predictor whose root points past its node array."""
    del marker
    model = legit.iris_hgb()
    model._predictors[0][0].nodes["left"][0] = 10**6
    return legit.write_joblib(model, tmp / "hgb_bad_child.joblib")


def hgb_bad_feature(tmp: Path, marker: Path) -> Path:
    """HistGradientBoosting predictor splitting on a feature the model does not have (skops)."""
    del marker
    model = legit.iris_hgb()
    model._predictors[0][0].nodes["feature_idx"][0] = 10**6
    return legit.write_skops(model, tmp / "hgb_bad_feature.skops")


def knn_bad_index(tmp: Path, marker: Path) -> Path:
    """KNN whose KD-tree index array points past the training data."""
    del marker
    model = legit.iris_knn()
    state = list(model._tree.__getstate__())
    state[1] = state[1].copy()
    state[1][0] = 10**9
    model._tree.__setstate__(tuple(state))
    return legit.write_joblib(model, tmp / "knn_bad_index.joblib")


def knn_bad_nodes(tmp: Path, marker: Path) -> Path:
    """KNN whose KD-tree node ranges run past the training data (skops)."""
    del marker
    model = legit.iris_knn()
    state = list(model._tree.__getstate__())
    state[2] = state[2].copy()
    state[2]["idx_end"][:] = 10**9
    model._tree.__setstate__(tuple(state))
    return legit.write_skops(model, tmp / "knn_bad_nodes.skops")


def _xgb_json(tmp: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(legit.xgb_classifier(tmp).read_bytes())
    return data


def _xgb_tree(model: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = model["learner"]["gradient_booster"]["model"]["trees"][0]
    return tree


def _xgb_crafted(kind: str, fmt: str) -> Callable[[Path, Path], Path]:
    def build(tmp: Path, marker: Path) -> Path:
        del marker
        model = _xgb_json(tmp)
        tree = _xgb_tree(model)
        if kind == "child":
            tree["left_children"][0] = 10**6
        elif kind == "cycle":
            tree["left_children"][0] = 0
        else:
            tree["split_indices"][0] = 10**6
        path = tmp / f"xgb_{kind}.{fmt}"
        path.write_bytes(json.dumps(model).encode() if fmt == "json" else ubjson(model))
        return path

    return build


def ubjson(value: Any) -> bytes:
    """Encode JSON-like data as UBJSON (the subset XGBoost writes)."""
    if isinstance(value, dict):
        body = b"".join(_ubj_key(k) + ubjson(v) for k, v in value.items())
        return b"{" + body + b"}"
    if isinstance(value, list):
        return b"[" + b"".join(ubjson(v) for v in value) + b"]"
    if isinstance(value, bool):
        return b"T" if value else b"F"
    if isinstance(value, int):
        return b"L" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"D" + struct.pack(">d", value)
    if isinstance(value, str):
        return b"S" + _ubj_key(value)
    raise TypeError(type(value))


def _ubj_key(text: str) -> bytes:
    data = text.encode()
    return b"L" + struct.pack(">q", len(data)) + data


def _lightgbm_text(tmp: Path) -> str:
    return legit.lgb_classifier(tmp).read_text()


def lightgbm_bad_child(tmp: Path, marker: Path) -> Path:
    """LightGBM text whose first tree's left child points past its nodes."""
    del marker
    text = _lightgbm_text(tmp)
    head, _, rest = text.partition("left_child=")
    line, _, tail = rest.partition("\n")
    values = line.split()
    values[0] = "1000000"
    path = tmp / "lgb_bad_child.txt"
    path.write_text(head + "left_child=" + " ".join(values) + "\n" + tail)
    return path


def lightgbm_truncated(tmp: Path, marker: Path) -> Path:
    """A LightGBM text model cut in the middle of its trees (aborts LightGBM at load)."""
    del marker
    text = _lightgbm_text(tmp)
    path = tmp / "lgb_truncated.txt"
    path.write_text(text[: text.index("Tree=2") + 40])
    return path


def _lightgbm_tree_sizes(tmp: Path, size: int, name: str) -> Path:
    text = _lightgbm_text(tmp)
    line = next(row for row in text.splitlines() if row.startswith("tree_sizes="))
    count = len(line.split("=", 1)[1].split())
    path = tmp / name
    path.write_text(text.replace(line, "tree_sizes=" + " ".join([str(size)] * count)))
    return path


def lightgbm_abort(tmp: Path, marker: Path) -> Path:
    """LightGBM text with tree_sizes too small: LightGBM aborts the process (SIGABRT) at load.

    The structure check does not read tree_sizes' values, so this reaches LightGBM and
    tests that a native crash in the child becomes a 422.
    """
    del marker
    return _lightgbm_tree_sizes(tmp, 10, "lgb_abort.txt")


def lightgbm_segfault(tmp: Path, marker: Path) -> Path:
    """LightGBM text with tree_sizes too large: LightGBM reads out of bounds (SIGSEGV or SIGABRT)."""
    del marker
    return _lightgbm_tree_sizes(tmp, 100_000, "lgb_segfault.txt")


def skops_zip_bomb(tmp: Path, marker: Path) -> Path:
    """A skops-looking zip with a member declaring 64 MiB of zeros in ~64 KiB."""
    del marker
    path = tmp / "bomb.skops"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", json.dumps({"__class__": "LogisticRegression"}))
        with archive.open("big.npy", "w", force_zip64=True) as member:
            chunk = bytes(1024**2)
            for _ in range(64):
                member.write(chunk)
    return path


def joblib_zlib_bomb(tmp: Path, marker: Path, expanded_bytes: int = 640 * 1024**2) -> Path:
    """A zlib-compressed joblib file (~1 MiB) holding one array of `expanded_bytes` zeros."""
    del marker
    path = tmp / "bomb.joblib"
    zeros = np.broadcast_to(np.float64(0), (expanded_bytes // 8,))
    joblib.dump(zeros, path, compress=("zlib", 1))
    return path


def onnx_external_data(tmp: Path, marker: Path) -> Path:
    """An ONNX MatMul whose weight initializer is external data pointing at /etc/passwd."""
    del marker
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("W", TensorProto.FLOAT, [4, 1], [0.0] * 4)
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "/etc/passwd"), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "external",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp / "external.onnx"
    path.write_bytes(model.SerializeToString())
    del onnx
    return path


def onnx_custom_domain(tmp: Path, marker: Path) -> Path:
    """An ONNX model using an operator from a custom domain."""
    del marker
    import onnx

    model = onnx.load_model_from_string(legit.onnx_regressor(tmp).read_bytes())
    model.graph.node[0].domain = "com.evil"
    opset = model.opset_import.add()
    opset.domain, opset.version = "com.evil", 1
    path = tmp / "custom_domain.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _onnx_file(tmp: Path, name: str, nodes: list[Any], initializers: list[Any]) -> Path:
    """Write a one-input ONNX graph X[N, 4] -> Y from nodes (opset 17)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _onnx_max_of_x() -> list[Any]:
    """Nodes computing n = int64(max(X)) as a 1-element tensor: a count chosen by the caller."""
    from onnx import TensorProto, helper

    return [
        helper.make_node("ReduceMax", ["X"], ["m"], keepdims=0),
        helper.make_node("Reshape", ["m", "one_dim"], ["m1"]),
        helper.make_node("Cast", ["m1"], ["n"], to=TensorProto.INT64),
    ]


def _onnx_one_dim() -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor("one_dim", TensorProto.INT64, [1], [1])


def onnx_loop_trip_count(tmp: Path, marker: Path) -> Path:
    """The 27.5 s attack: a Loop whose trip count is int64(max(X)); instant on zeros."""
    del marker
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor("step", TensorProto.FLOAT, [1], [1.0])],
    )
    nodes = [
        helper.make_node("ReduceMax", ["X"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["trips"], to=TensorProto.INT64),
        helper.make_node("Loop", ["trips", "true", "zero"], ["Y"], body=body),
    ]
    initializers = [
        helper.make_tensor("true", TensorProto.BOOL, [], [True]),
        helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
    ]
    return _onnx_file(tmp, "loop_trip_count", nodes, initializers)


def onnx_constant_of_shape_from_values(tmp: Path, marker: Path) -> Path:
    """The 4.3 GiB attack: ConstantOfShape(int64(max(X))) allocates what the caller asks."""
    del marker
    from onnx import TensorProto, helper

    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        *_onnx_max_of_x(),
        helper.make_node("ConstantOfShape", ["n"], ["big"], value=fill),
        helper.make_node("ReduceSum", ["big"], ["Y"], keepdims=0),
    ]
    return _onnx_file(tmp, "constant_of_shape", nodes, [_onnx_one_dim()])


def onnx_tile_from_values(tmp: Path, marker: Path) -> Path:
    """Tile X by repeats computed from X's values, hidden behind arithmetic on the count."""
    del marker
    from onnx import TensorProto, helper

    nodes = [
        *_onnx_max_of_x(),
        helper.make_node("Concat", ["n", "one_dim"], ["repeats"], axis=0),
        helper.make_node("Tile", ["X", "repeats"], ["Y"]),
    ]
    del TensorProto
    return _onnx_file(tmp, "tile_from_values", nodes, [_onnx_one_dim()])


def onnx_range_in_scan(tmp: Path, marker: Path) -> Path:
    """A Scan over X's rows whose body builds Range(0, row max): the shape rule holds in bodies."""
    del marker
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["row"], ["limit"], keepdims=0),
            helper.make_node("Range", ["start", "limit", "delta"], ["steps"]),
            helper.make_node("ReduceSum", ["steps"], ["total"], keepdims=0),
            helper.make_node("Identity", ["state_in"], ["state_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("row", TensorProto.FLOAT, [4]),
        ],
        [
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
        ],
    )
    nodes = [
        helper.make_node("Scan", ["zero", "X"], ["last", "Y"], body=body, num_scan_inputs=1),
    ]
    initializers = [
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("start", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("delta", TensorProto.FLOAT, [], [1.0]),
    ]
    return _onnx_file(tmp, "range_in_scan", nodes, initializers)


def onnx_costly_per_row(tmp: Path, *, repeats: int, passes: int) -> Path:
    """An ONNX model the graph rules accept whose cost grows with the rows sent.

    Tile by constant repeats makes each row `4 * repeats` floats, and `passes` Sin nodes each
    walk them all: cheap on the probe's one row, heavy (time or memory) on many. What the run
    budget and the memory cap are for.
    """
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Tile", ["X", "repeats"], ["t0"])]
    for number in range(passes):
        nodes.append(helper.make_node("Sin", [f"t{number}"], [f"t{number + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"t{passes}", "axes"], ["Y"], keepdims=1))
    initializers = [
        helper.make_tensor("repeats", TensorProto.INT64, [2], [1, repeats]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
    ]
    return _onnx_file(tmp, f"costly_{repeats}_{passes}", nodes, initializers)


def junk(tmp: Path, marker: Path) -> Path:
    """Bytes in no model format."""
    del marker
    path = tmp / "junk.bin"
    path.write_bytes(b"this is not a model\n" * 10)
    return path


@dataclass(frozen=True)
class HostileCase:
    """A hostile file, and the status and reason the probe must refuse it with."""

    name: str
    build: Callable[[Path, Path], Path]
    status: int
    reason: str


REFUSED = 422
HOSTILE_FILES: list[HostileCase] = [
    HostileCase("os_system", joblib_os_system, REFUSED, "global 'posix.system' is not allowed"),
    HostileCase("eval", pickle_eval, REFUSED, "global 'builtins.eval' is not allowed"),
    HostileCase("exec", pickle_exec, REFUSED, "global 'builtins.exec' is not allowed"),
    HostileCase("getattr", pickle_getattr_globals, REFUSED, "'builtins.getattr' is not allowed"),
    HostileCase("attrgetter", pickle_attrgetter, REFUSED, "global 'operator."),
    HostileCase("dotted_name", pickle_dotted_name, REFUSED, "'sklearn._config.os.system'"),
    HostileCase("runstring", numpy_runstring, REFUSED, "runstring' is not allowed"),
    HostileCase("sklearn_testing", sklearn_testing_helper, REFUSED, "sklearn.utils._testing"),
    HostileCase("savetxt", numpy_savetxt, REFUSED, "'numpy.savetxt' is not allowed"),
    HostileCase("ndarray_wrapper", joblib_ndarray_wrapper, REFUSED, "NDArrayWrapper' is not"),
    HostileCase("class_poisoning", class_poisoning, REFUSED, "modifies the class"),
    HostileCase("tree_child_joblib", _crafted_tree(_bad_child, "joblib", False), REFUSED, "child"),
    HostileCase("tree_cycle_joblib", _crafted_tree(_cycle, "joblib", False), REFUSED, "child"),
    HostileCase(
        "tree_feature_skops", _crafted_tree(_bad_feature, "skops", False), REFUSED, "feature"
    ),
    HostileCase("forest_child_skops", _crafted_tree(_bad_child, "skops", True), REFUSED, "child"),
    HostileCase("forest_cycle_skops", _crafted_tree(_cycle, "skops", True), REFUSED, "child"),
    HostileCase(
        "forest_feature_joblib", _crafted_tree(_bad_feature, "joblib", True), REFUSED, "feature"
    ),
    HostileCase(
        "tree_node_twice_skops", _crafted_tree(_shared_child, "skops", False), REFUSED, "twice"
    ),
    HostileCase(
        "forest_shared_deep_tree",
        forest_sharing_one_deep_tree,
        REFUSED,
        "a row may walk 1000250 tree nodes, more than 1000000",
    ),
    HostileCase("hgb_child", hgb_bad_child, REFUSED, "child"),
    HostileCase("hgb_feature", hgb_bad_feature, REFUSED, "feature"),
    HostileCase("knn_index", knn_bad_index, REFUSED, "index array out of range"),
    HostileCase("knn_nodes", knn_bad_nodes, REFUSED, "node sample range"),
    HostileCase("xgb_json_child", _xgb_crafted("child", "json"), REFUSED, "child"),
    HostileCase("xgb_json_cycle", _xgb_crafted("cycle", "json"), REFUSED, "child"),
    HostileCase("xgb_json_feature", _xgb_crafted("feature", "json"), REFUSED, "feature"),
    HostileCase("xgb_ubj_child", _xgb_crafted("child", "ubj"), REFUSED, "child"),
    HostileCase("xgb_ubj_cycle", _xgb_crafted("cycle", "ubj"), REFUSED, "child"),
    HostileCase("xgb_ubj_feature", _xgb_crafted("feature", "ubj"), REFUSED, "feature"),
    HostileCase("lgb_child", lightgbm_bad_child, REFUSED, "child"),
    HostileCase("lgb_truncated", lightgbm_truncated, REFUSED, "truncated"),
    HostileCase("lgb_abort", lightgbm_abort, REFUSED, "model crashed the loader (signal SIGABRT)"),
    HostileCase("lgb_out_of_bounds", lightgbm_segfault, REFUSED, "crashed the loader (signal SIG"),
    HostileCase("skops_zip_bomb", skops_zip_bomb, REFUSED, "compressed more than 200:1"),
    HostileCase("onnx_external", onnx_external_data, REFUSED, "external data"),
    HostileCase("onnx_custom_domain", onnx_custom_domain, REFUSED, "custom operator domain"),
    HostileCase("onnx_loop", onnx_loop_trip_count, REFUSED, "ONNX operator 'Loop'"),
    HostileCase(
        "onnx_constant_of_shape",
        onnx_constant_of_shape_from_values,
        REFUSED,
        "operator 'ConstantOfShape' takes a shape or count from input values",
    ),
    HostileCase("onnx_tile", onnx_tile_from_values, REFUSED, "operator 'Tile' takes a shape"),
    HostileCase("onnx_range_in_scan", onnx_range_in_scan, REFUSED, "operator 'Range' takes"),
    HostileCase("junk", junk, 415, "unrecognised model file"),
]
HOSTILE_BY_NAME = {case.name: case for case in HOSTILE_FILES}

# Code-execution payloads, for tests proving that they do run when loaded without protection.
LIVE_PAYLOADS = ["os_system", "eval", "exec", "getattr", "attrgetter", "dotted_name", "runstring"]
