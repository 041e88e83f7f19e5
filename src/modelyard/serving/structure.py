"""Structure checks for tree and index models: crafted indices must not reach native code.

docs/architecture/security-notes.md, item 4: crafted child or feature indices segfault or hang predict in scikit-learn
trees, HistGradientBoosting, KNN trees, XGBoost and LightGBM, and one probe prediction does not
walk every branch. So every load checks every node: children in range and pointing forward
(which also rules out cycles), each node reached once, feature indices below the model's width.

A row's cost is the tree nodes it walks, at most the sum of the trees' depths, and its values
choose the path: a degenerate chain tree answers zeros at its root and walks its whole length
for a chosen row. So the checks also measure that sum (`StructureCost.path_nodes`), refuse
models past `MAX_ROW_PATH_NODES`, and let the batcher run cheap calls on the event loop only
for models whose worst row stays small (`INLINE_MAX_ROW_PATH_NODES`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from modelyard.serving.formats import ModelRejected

# Meta-estimators whose steps see transformed input and check its width themselves. Every other
# parent (forests, boosting, bagging) calls its members with check_input=False, so a member is
# held to the narrower of its own width and its parent's.
VALIDATING_META_ESTIMATORS: Final = frozenset(
    {"Pipeline", "FeatureUnion", "ColumnTransformer", "TransformedTargetRegressor"}
)
# How deep the walk through nested estimators goes; real pipelines are a handful of levels.
MAX_NESTING: Final = 50
# Most tree nodes one row may walk, summed over a model's trees. Large real ensembles stay well
# below: 5,000 XGBoost rounds x 10 classes x depth 8 is 400,000; 1,000 unpruned forest trees of
# depth ~60 are 60,000. A crafted chain of millions of nodes made each row cost the model's size.
MAX_ROW_PATH_NODES: Final = 1_000_000
# Below this, a row's worst path costs microseconds: a call measured cheap stays cheap whatever
# its values, so it may run on the event loop (a 64-row batch walks at most ~260,000 nodes).
INLINE_MAX_ROW_PATH_NODES: Final = 4096


@dataclass(frozen=True, slots=True)
class StructureCost:
    """What the structure checks learnt about the worst cost of one row."""

    path_nodes: int = 0
    """Tree nodes a row walks at most, summed over every tree of the model."""
    has_search_index: bool = False
    """A KD-tree or ball tree: a neighbour search's cost follows the query's values."""

    @property
    def is_bounded_by_shape(self) -> bool:
        """Tell whether a call's cost is fixed by its shape within a small factor."""
        return not self.has_search_index and self.path_nodes <= INLINE_MAX_ROW_PATH_NODES


class _Tally:
    """What a walk through a model found: its trees' longest paths, summed, and indices."""

    def __init__(self) -> None:
        self.path_nodes = 0
        self.has_search_index = False


def _reject(where: str, what: str) -> ModelRejected:
    return ModelRejected(f"model refused: {where}: {what}")


def _int_array(values: Any, where: str, name: str) -> npt.NDArray[np.int64]:
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise _reject(where, f"{name} is not a 1-D integer array")
    return array.astype(np.int64)


def _check_children(
    left: npt.NDArray[np.int64],
    right: npt.NDArray[np.int64],
    leaf: npt.NDArray[np.bool_],
    n_nodes: int,
    where: str,
) -> int:
    """Check that each internal node's children come after it, exist and have one parent.

    Returns the number of nodes on the tree's longest root-to-leaf path.
    """
    index = np.arange(n_nodes)[~leaf]
    for name, children in (("left", left[~leaf]), ("right", right[~leaf])):
        if np.any(children <= index) or np.any(children >= n_nodes):
            raise _reject(where, f"{name} child index out of range or not after its parent")
    parent = np.full(n_nodes, -1, dtype=np.int64)
    _set_parents(parent, index, left[~leaf], right[~leaf], where)
    return _longest_path(parent)


def _set_parents(
    parent: npt.NDArray[np.int64],
    index: npt.NDArray[np.int64],
    left: npt.NDArray[np.int64],
    right: npt.NDArray[np.int64],
    where: str,
) -> None:
    """Record each child's parent, refusing a node reached twice (a DAG walks paths twice)."""
    children = np.concatenate([left, right])
    if len(np.unique(children)) != len(children):
        raise _reject(where, "a node is reached twice")
    parent[left] = index
    parent[right] = index


def _longest_path(parent: npt.NDArray[np.int64]) -> int:
    """Return the nodes on the longest path to a root, by pointer jumping (log-depth passes).

    Nodes nothing points to (XGBoost's deleted nodes) count as roots of their own.
    """
    if len(parent) == 0:
        return 0
    ancestor = parent.copy()
    distance = (parent >= 0).astype(np.int64)
    live = np.flatnonzero(ancestor >= 0)
    while len(live):
        up = ancestor[live]
        distance[live] += distance[up]
        ancestor[live] = ancestor[up]
        live = live[ancestor[live] >= 0]
    return int(distance.max()) + 1


def check_sklearn_tree(tree: Any, width: int | None, where: str = "tree") -> int:
    """Check a fitted sklearn.tree._tree.Tree; return the nodes on its longest path."""
    n_nodes = int(tree.node_count)
    left = _int_array(tree.children_left, where, "children_left")
    right = _int_array(tree.children_right, where, "children_right")
    feature = _int_array(tree.feature, where, "feature")
    threshold = np.asarray(tree.threshold)
    if n_nodes < 1 or any(len(a) != n_nodes for a in (left, right, feature, threshold)):
        raise _reject(where, "node arrays do not match node_count")
    if np.asarray(tree.value).shape[0] != n_nodes:
        raise _reject(where, "value array does not match node_count")
    leaf = left == -1
    if np.any(leaf != (right == -1)):
        raise _reject(where, "node with exactly one child")
    path_nodes = _check_children(left, right, leaf, n_nodes, where)
    limit = int(tree.n_features) if width is None else min(int(tree.n_features), width)
    split = feature[~leaf]
    if np.any(split < 0) or np.any(split >= limit):
        raise _reject(where, f"split feature index outside 0..{limit - 1}")
    if np.any(np.isnan(threshold[~leaf])):
        raise _reject(where, "NaN split threshold")
    return path_nodes


def check_hist_predictor(predictor: Any, width: int | None, where: str) -> int:
    """Check one HistGradientBoosting TreePredictor's nodes; return its longest path."""
    nodes = np.asarray(predictor.nodes)
    names = nodes.dtype.names or ()
    if nodes.ndim != 1 or not {"left", "right", "feature_idx", "is_leaf"} <= set(names):
        raise _reject(where, "malformed predictor nodes")
    n_nodes = len(nodes)
    if n_nodes < 1:
        raise _reject(where, "empty predictor")
    leaf = nodes["is_leaf"].astype(bool)
    left = nodes["left"].astype(np.int64)
    right = nodes["right"].astype(np.int64)
    path_nodes = _check_children(left, right, leaf, n_nodes, where)
    feature = nodes["feature_idx"].astype(np.int64)[~leaf]
    if width is not None and (np.any(feature < 0) or np.any(feature >= width)):
        raise _reject(where, f"split feature index outside 0..{width - 1}")
    categorical = (nodes["is_categorical"].astype(bool)) & ~leaf
    if np.any(categorical):
        bitsets = np.asarray(predictor.raw_left_cat_bitsets)
        binned = np.asarray(predictor.binned_left_cat_bitsets)
        limit = min(len(bitsets), len(binned))
        if np.any(nodes["bitset_idx"][categorical].astype(np.int64) >= limit):
            raise _reject(where, "categorical bitset index out of range")
    return path_nodes


def check_binary_tree(tree: Any, where: str) -> None:
    """Check a KDTree or BallTree index (neighbors models)."""
    state = tree.__getstate__()
    data, idx_array, node_data, node_bounds = (np.asarray(a) for a in state[:4])
    n_levels, n_nodes = int(state[5]), int(state[6])
    if data.ndim != 2:
        raise _reject(where, "index data is not 2-D")
    n_samples, n_features = data.shape
    idx = _int_array(idx_array, where, "idx_array")
    if len(idx) != n_samples or np.any(idx < 0) or np.any(idx >= n_samples):
        raise _reject(where, "index array out of range")
    if node_data.ndim != 1 or len(node_data) != n_nodes or n_nodes < 1:
        raise _reject(where, "node data does not match the node count")
    if n_nodes != 2**n_levels - 1:
        raise _reject(where, "node count does not match the tree depth")
    start = node_data["idx_start"].astype(np.int64)
    end = node_data["idx_end"].astype(np.int64)
    if np.any(start < 0) or np.any(end > n_samples) or np.any(start > end):
        raise _reject(where, "node sample range out of bounds")
    inner = np.flatnonzero(node_data["is_leaf"] == 0)
    if np.any(2 * inner + 2 >= n_nodes):
        raise _reject(where, "internal node without children")
    if (
        node_bounds.ndim != 3
        or node_bounds.shape[1] != n_nodes
        or node_bounds.shape[2] != n_features
    ):
        raise _reject(where, "node bounds do not match the index")
    sample_weight = state[12]
    if sample_weight is not None and len(np.asarray(sample_weight)) != n_samples:
        raise _reject(where, "sample weights do not match the index")


def _width_of(estimator: Any, inherited: int | None) -> int | None:
    width = getattr(estimator, "n_features_in_", None)
    if isinstance(width, int | np.integer) and not isinstance(width, bool):
        return int(width) if inherited is None else min(int(width), inherited)
    return inherited


def _check_sklearn(
    obj: Any, width: int | None, where: str, depth: int, memo: dict[int, int], tally: _Tally
) -> int:
    """Walk an sklearn object graph, checking every tree, predictor and index in it.

    Returns the longest paths of the trees under `obj`, summed. An object reached again is
    checked once but counted again: a pickle can list one tree object 1,000 times in a forest,
    and predict then walks it 1,000 times. (`memo` maps each object met to its sum.)
    """
    if depth > MAX_NESTING:
        raise _reject(where, "estimators nested too deeply")
    if id(obj) in memo:
        return memo[id(obj)]
    memo[id(obj)] = 0  # while its children are walked: a cycle adds nothing
    path_nodes = _check_sklearn_object(obj, width, where, depth, memo, tally)
    memo[id(obj)] = path_nodes
    return path_nodes


def _check_sklearn_object(
    obj: Any, width: int | None, where: str, depth: int, memo: dict[int, int], tally: _Tally
) -> int:
    module = type(obj).__module__
    name = type(obj).__name__
    if module == "sklearn.tree._tree" and name == "Tree":
        return check_sklearn_tree(obj, width, where)
    if name == "TreePredictor":
        return check_hist_predictor(obj, width, where)
    if name in {"KDTree", "BallTree"}:
        check_binary_tree(obj, where)
        tally.has_search_index = True
        return 0
    if isinstance(obj, dict):
        children: Iterable[tuple[str, Any]] = ((str(k), v) for k, v in obj.items())
    elif isinstance(obj, list | tuple):
        children = ((str(i), v) for i, v in enumerate(obj))
    elif isinstance(obj, np.ndarray):
        if obj.dtype != object:
            return 0
        children = ((str(i), v) for i, v in enumerate(obj.ravel()))
    elif module.startswith("sklearn.") and hasattr(obj, "__dict__"):
        width = _width_of(obj, width)
        _check_sklearn_arrays(obj, width, where)
        if name in VALIDATING_META_ESTIMATORS:
            # Their steps validate their own input width: the raw width does not apply.
            width = None
        children = ((key, value) for key, value in vars(obj).items())
    else:
        return 0
    return sum(
        _check_sklearn(value, width, f"{where}.{key}", depth + 1, memo, tally)
        for key, value in children
    )


def _check_sklearn_arrays(estimator: Any, width: int | None, where: str) -> None:
    """Check the index arrays some estimators keep beside their sub-estimators."""
    features = getattr(estimator, "estimators_features_", None)
    if features is not None and width is not None:
        for column in features:
            index = np.asarray(column)
            if index.size and (index.min() < 0 or index.max() >= width):
                raise _reject(where, "estimators_features_ index out of range")
    labels = getattr(estimator, "_y", None)
    classes = getattr(estimator, "classes_", None)
    if labels is not None and classes is not None:
        y = np.asarray(labels)
        sizes = [len(c) for c in classes] if isinstance(classes, list) else [len(classes)]
        columns = y.reshape(len(y), -1) if y.ndim else y.reshape(1, -1)
        if y.dtype.kind in "iu" and columns.shape[1] == len(sizes):
            for j, size in enumerate(sizes):
                if np.any(columns[:, j] < 0) or np.any(columns[:, j] >= size):
                    raise _reject(where, "neighbour label index out of range")


def check_xgboost_json(model: dict[str, Any]) -> int:
    """Check every tree of an XGBoost model in its JSON form; return their longest paths' sum."""
    try:
        learner = model["learner"]
        num_feature = int(learner["learner_model_param"]["num_feature"])
        num_class = int(learner["learner_model_param"].get("num_class", "0"))
        num_target = int(learner["learner_model_param"].get("num_target", "1"))
        booster = learner["gradient_booster"]
        if booster["name"] == "dart":
            booster = booster["gbtree"]
        if booster["name"] == "gblinear":
            return 0
        trees_model = booster["model"]
        trees = trees_model["trees"]
        tree_info = trees_model["tree_info"]
    except (KeyError, TypeError, ValueError) as exc:
        raise _reject("xgboost", "malformed model JSON") from exc
    if len(tree_info) != len(trees):
        raise _reject("xgboost", "tree_info does not match the trees")
    groups = max(num_class, num_target, 1)
    if any(not isinstance(g, int) or g < 0 or g >= groups for g in tree_info):
        raise _reject("xgboost", "tree group index out of range")
    indptr = trees_model.get("iteration_indptr")
    if indptr is not None and (
        any(b < a for a, b in itertools.pairwise(indptr))
        or (indptr and (indptr[0] != 0 or indptr[-1] != len(trees)))
    ):
        raise _reject("xgboost", "iteration_indptr does not match the trees")
    return sum(
        _check_xgboost_tree(tree, num_feature, f"xgboost tree {number}")
        for number, tree in enumerate(trees)
    )


def _check_xgboost_tree(tree: dict[str, Any], num_feature: int, where: str) -> int:
    try:
        n_nodes = int(tree["tree_param"]["num_nodes"])
        left = _int_array(tree["left_children"], where, "left_children")
        right = _int_array(tree["right_children"], where, "right_children")
        split = _int_array(tree["split_indices"], where, "split_indices")
        arrays = [tree[k] for k in ("split_conditions", "default_left", "base_weights")]
    except (KeyError, TypeError, ValueError) as exc:
        raise _reject(where, "malformed tree") from exc
    if int(tree["tree_param"].get("size_leaf_vector", "1")) > 1:
        raise _reject(where, "multi-target trees are not supported")
    if n_nodes < 1 or any(len(a) != n_nodes for a in (left, right, split, *arrays)):
        raise _reject(where, "node arrays do not match num_nodes")
    leaf = left == -1
    if np.any(leaf != (right == -1)):
        raise _reject(where, "node with exactly one child")
    path_nodes = _check_children(left, right, leaf, n_nodes, where)
    if np.any(split[~leaf] < 0) or np.any(split[~leaf] >= num_feature):
        raise _reject(where, f"split feature index outside 0..{num_feature - 1}")
    nodes = tree.get("categories_nodes") or []
    segments = tree.get("categories_segments") or []
    sizes = tree.get("categories_sizes") or []
    total = len(tree.get("categories") or [])
    if len(nodes) != len(segments) or len(nodes) != len(sizes):
        raise _reject(where, "categorical split arrays disagree")
    for node, segment, size in zip(nodes, segments, sizes, strict=True):
        if not 0 <= node < n_nodes or segment < 0 or size < 0 or segment + size > total:
            raise _reject(where, "categorical split out of range")
    return path_nodes


def _lightgbm_sections(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Split a LightGBM model string into its header and tree key=value sections."""
    head, marker, _rest = text.partition("\nend of trees")
    if not marker:
        raise _reject("lightgbm", "truncated model (no 'end of trees')")
    blocks = head.split("\nTree=")
    header: dict[str, str] = {}
    for line in blocks[0].splitlines():
        key, sep, value = line.partition("=")
        if sep:
            header[key.strip()] = value.strip()
    trees: list[dict[str, str]] = []
    for block in blocks[1:]:
        fields: dict[str, str] = {}
        for line in block.splitlines()[1:]:
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = value.strip()
        trees.append(fields)
    return header, trees


def _numbers(
    fields: dict[str, str], key: str, count: int, where: str, *, integer: bool
) -> list[Any]:
    raw = fields.get(key, "")
    try:
        values = [int(v) if integer else float(v) for v in raw.split()] if raw else []
    except ValueError as exc:
        raise _reject(where, f"{key} is not numeric") from exc
    if len(values) != count:
        raise _reject(where, f"{key} has {len(values)} values, expected {count}")
    return values


def check_lightgbm_text(text: str) -> int:
    """Check a LightGBM text model: header, every tree's arrays and child indices.

    Returns the sum of its trees' longest paths.
    """
    header, trees = _lightgbm_sections(text)
    if not header.get("version", "").startswith("v"):
        raise _reject("lightgbm", "missing version")
    try:
        n_features = int(header["max_feature_idx"]) + 1
        per_iteration = int(header.get("num_tree_per_iteration", "1"))
        num_class = int(header.get("num_class", "1"))
    except (KeyError, ValueError) as exc:
        raise _reject("lightgbm", "malformed header") from exc
    if n_features < 1 or per_iteration < 1 or num_class < 1:
        raise _reject("lightgbm", "malformed header")
    if not trees or len(trees) % per_iteration:
        raise _reject("lightgbm", "tree count is not a multiple of trees per iteration")
    sizes = header.get("tree_sizes")
    if sizes is not None and len(sizes.split()) != len(trees):
        raise _reject("lightgbm", "tree_sizes does not match the trees")
    return sum(
        _check_lightgbm_tree(fields, n_features, f"lightgbm tree {number}")
        for number, fields in enumerate(trees)
    )


def _check_lightgbm_tree(fields: dict[str, str], n_features: int, where: str) -> int:
    try:
        n_leaves = int(fields["num_leaves"])
        n_cat = int(fields.get("num_cat", "0"))
    except (KeyError, ValueError) as exc:
        raise _reject(where, "malformed tree header") from exc
    if n_leaves < 1 or n_cat < 0:
        raise _reject(where, "bad num_leaves or num_cat")
    if fields.get("is_linear", "0") != "0":
        raise _reject(where, "linear trees are not supported")
    _numbers(fields, "leaf_value", n_leaves, where, integer=False)
    n_inner = n_leaves - 1
    if n_inner == 0:
        return 1
    split = np.array(_numbers(fields, "split_feature", n_inner, where, integer=True))
    threshold = _numbers(fields, "threshold", n_inner, where, integer=False)
    decision = np.array(_numbers(fields, "decision_type", n_inner, where, integer=True))
    left = np.array(_numbers(fields, "left_child", n_inner, where, integer=True))
    right = np.array(_numbers(fields, "right_child", n_inner, where, integer=True))
    if np.any(split < 0) or np.any(split >= n_features):
        raise _reject(where, f"split feature index outside 0..{n_features - 1}")
    # A child >= 0 is an internal node (after its parent); a negative one is ~leaf_index.
    index = np.arange(n_inner)
    for name, children in (("left", left), ("right", right)):
        inner = children >= 0
        if np.any(children[inner] <= index[inner]) or np.any(children[inner] >= n_inner):
            raise _reject(where, f"{name} child index out of range or not after its parent")
        if np.any(~children[~inner] >= n_leaves):
            raise _reject(where, f"{name} leaf index out of range")
    reached = np.concatenate([left, right])
    if len(set(reached.tolist())) != len(reached):
        raise _reject(where, "a node is reached twice")
    # Internal nodes only (a leaf ends each path: one more node).
    parent = np.full(n_inner, -1, dtype=np.int64)
    for children in (left, right):
        inner = children >= 0
        parent[children[inner]] = index[inner]
    path_nodes = _longest_path(parent) + 1
    categorical = (decision & 1).astype(bool)
    if np.any(categorical):
        if n_cat == 0:
            raise _reject(where, "categorical split without categories")
        bounds = _numbers(fields, "cat_boundaries", n_cat + 1, where, integer=True)
        words = len(fields.get("cat_threshold", "").split())
        if (
            bounds[0] != 0
            or bounds[-1] != words
            or any(b < a for a, b in itertools.pairwise(bounds))
        ):
            raise _reject(where, "categorical boundaries out of range")
        for position in np.flatnonzero(categorical):
            value = threshold[position]
            if not (math.isfinite(value) and value == int(value) and 0 <= value < n_cat):
                raise _reject(where, "categorical threshold out of range")
    return path_nodes


def check_structure(model: Any) -> StructureCost:
    """Check the trees and indices of a loaded model before anything predicts with it.

    Returns what the checks learnt about the worst cost of one row.

    Raises:
        ModelRejected: a node, feature or index is out of range, a tree has a cycle or a node
            reached twice, or a row may walk more than MAX_ROW_PATH_NODES tree nodes.
    """
    module = type(model).__module__
    tally = _Tally()
    if module.startswith("sklearn."):
        tally.path_nodes = _check_sklearn(model, None, type(model).__name__, 0, {}, tally)
    elif module.startswith("xgboost"):
        tally.path_nodes = check_xgboost_json(json.loads(bytes(model.save_raw("json"))))
    elif module.startswith("lightgbm"):
        tally.path_nodes = check_lightgbm_text(model.model_to_string())
    if tally.path_nodes > MAX_ROW_PATH_NODES:
        raise _reject(
            "trees",
            f"a row may walk {tally.path_nodes} tree nodes, more than {MAX_ROW_PATH_NODES} "
            "(trees this deep make each prediction cost up to the model's size)",
        )
    return StructureCost(tally.path_nodes, tally.has_search_index)
