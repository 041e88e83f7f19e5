"""What a prediction request's inputs must be to reach a model: one validator for both protocols.

Cheap checks come first. `check_batch` refuses a batch from its declared sizes alone (the native
route's list lengths, a V2 tensor's shape), in O(1), before any per-value work; every message
lists a bounded number of client-chosen names. Then the values are read, and `to_batch` makes
the model's 2-D array of them. The native route sends rows or records (`rows_batch`), V2 one
tensor (`check_tensor`, then `tensor_batch`); both end in the same checks and messages.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.errors import Unprocessable
from modelyard.predictions import oip
from modelyard.serving.runtimes import Runtime
from modelyard.serving.runtimes.base import ROWS, TensorSpec

# Most names (and characters of each) an error message lists; it says how many more there are.
LISTED_NAMES = 5
NAME_MAX_CHARS = 64


class InvalidInput(Unprocessable):
    """Inputs that do not fit the model; the message says what is wrong."""

    type = "invalid-input"


@dataclass(frozen=True, slots=True)
class InputLimits:
    """The most one prediction request may send: rows, and values over all of them."""

    max_rows: int = 10_000
    max_elements: int = 1_000_000


def feature_count(runtime: Runtime, feature_names: list[str] | None) -> int | None:
    """Return how many features the model takes, if the model or its input schema says."""
    return runtime.n_features or (len(feature_names) if feature_names else None)


def check_batch(
    rows: int, width: int, *, expected: int | None, limits: InputLimits, what: str
) -> None:
    """Refuse a batch of `rows` rows of `width` values that cannot fit, from its sizes alone.

    `expected` is the model's feature count (None: unknown, or checked later); `what` names the
    part of the request whose width is told ("inputs[0]", "the input").

    Raises:
        InvalidInput: no rows, too many rows, the wrong width, or too many values.
    """
    if rows == 0:
        raise InvalidInput(f"{what} has no rows")
    if rows > limits.max_rows:
        raise InvalidInput(f"{rows} rows is more than the {limits.max_rows} allowed per request")
    if expected is not None and width != expected:
        raise InvalidInput(f"the model takes {expected} features; {what} has {width}")
    if rows * width > limits.max_elements:
        raise InvalidInput(
            f"{rows} rows of {width} values is {rows * width} values, more than the "
            f"{limits.max_elements} allowed per request"
        )


def to_batch(values: np.ndarray, dtype: np.dtype[Any], *, is_json: bool) -> np.ndarray:
    """Return `values` (2-D, numeric) as the model's batch: `dtype`, C order, writable, finite.

    Raises:
        InvalidInput: a value is NaN or infinite, or becomes so in `dtype` (1e300 in float32).
    """
    batch = np.ascontiguousarray(values, dtype=dtype)
    # JSON cannot carry NaN or infinities (the parsers refuse them), and its numbers stay
    # finite in float64: only binary tensors, and floats narrower than float64, are checked.
    is_checked = batch.dtype.kind == "f" and (not is_json or batch.dtype.itemsize < 8)
    if is_checked and not np.isfinite(batch).all():
        raise InvalidInput(f"input values must be finite numbers that fit {batch.dtype}")
    # Binary tensors arrive as read-only views over the request body.
    return batch if batch.flags.writeable else batch.copy()


# --- the native route: rows or records --------------------------------------------------------


def rows_batch(
    inputs: Any, *, runtime: Runtime, feature_names: list[str] | None, limits: InputLimits
) -> np.ndarray:
    """Turn `inputs` (rows of numbers, or records by feature name) into the model's 2-D batch.

    Sizes are checked first, from lengths alone (rows, the first row's width, a record's key
    count); `feature_names` are the version's input schema's, if it names them.

    Raises:
        InvalidInput: saying what is wrong: not a non-empty list, too many rows or values, mixed
            or ragged rows, wrong feature count, missing/unknown names, non-numeric values.
    """
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs must be a non-empty list of rows or of records")
    expected = feature_count(runtime, feature_names)
    first = inputs[0]
    if isinstance(first, dict):
        names = feature_names or runtime.feature_names
        width = len(names) if names else len(first)
        # Records are matched by name: their width is checked once they are rows.
        check_batch(len(inputs), width, expected=None, limits=limits, what="inputs[0]")
        rows = _records_to_rows(inputs, names=names)
    elif isinstance(first, list):
        check_batch(len(inputs), len(first), expected=expected, limits=limits, what="inputs[0]")
        rows = inputs
    else:
        raise InvalidInput("inputs[0] must be a list of feature values or an object of features")
    try:
        matrix = np.array(rows)
    except (ValueError, OverflowError) as exc:
        raise InvalidInput(_ragged_reason(rows)) from exc
    if matrix.ndim != 2:
        raise InvalidInput(_ragged_reason(rows))
    if matrix.dtype.kind not in "iuf":
        raise InvalidInput(_non_numeric_reason(rows))
    if expected is not None and matrix.shape[1] != expected:
        raise InvalidInput(f"the model takes {expected} features; the rows have {matrix.shape[1]}")
    return to_batch(matrix, runtime.input_dtype, is_json=True)


def _records_to_rows(records: list[Any], *, names: list[str] | None) -> list[list[Any]]:
    if names is None:
        raise InvalidInput("this model does not name its features: send rows of values")
    wanted = set(names)
    rows = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InvalidInput(f"inputs[{i}] is not a record like inputs[0]")
        if record.keys() != wanted:
            raise InvalidInput(f"inputs[{i}]: " + _key_mismatch(record, names, wanted))
        rows.append([record[n] for n in names])
    return rows


def _key_mismatch(record: dict[str, Any], names: list[str], wanted: set[str]) -> str:
    """Say which names a record misses and which it has unknown, listing a few of each.

    O(features + LISTED_NAMES), whatever the record's size: a record with a million unknown
    keys is described by its first few and a count, never by sorting or joining them all.
    """
    missing = [name for name in names if name not in record]
    # len(record) = known + unknown keys, and the known ones are len(names) - len(missing).
    n_unknown = len(record) - (len(names) - len(missing))
    unknown = list(itertools.islice((key for key in record if key not in wanted), LISTED_NAMES))
    parts = []
    if missing:
        parts.append("missing " + _listed(missing[:LISTED_NAMES], len(missing)))
    if n_unknown:
        parts.append("unknown " + _listed(unknown, n_unknown))
    return "; ".join(parts)


def _listed(names: list[str], total: int) -> str:
    shown = [n if len(n) <= NAME_MAX_CHARS else n[:NAME_MAX_CHARS] + "..." for n in names]
    more = total - len(names)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _ragged_reason(rows: list[Any]) -> str:
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return f"inputs[{i}] is not a list like inputs[0]"
        if len(row) != len(rows[0]):
            return f"inputs[{i}] has {len(row)} values; inputs[0] has {len(rows[0])}"
        for j, value in enumerate(row):
            if isinstance(value, list | dict):
                return f"inputs[{i}][{j}] is not a number"
    return "inputs must be rows of numbers of one length"


def _non_numeric_reason(rows: list[Any]) -> str:
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"inputs[{i}][{j}] is not a number: {type(value).__name__}"
    return "inputs must be numbers"


# --- the Open Inference Protocol: one tensor ----------------------------------------------------


def check_tensor(
    header: oip.InferHeader,
    *,
    runtime: Runtime,
    feature_names: list[str] | None,
    limits: InputLimits,
) -> None:
    """Refuse a V2 request whose declared input does not fit the model, before any value is read.

    The codec has checked the request's element count against `limits.max_elements` already.

    Raises:
        InvalidInput: not one numeric tensor of shape [rows, features] (or [features], one row
            sent flat), or `check_batch` refuses its shape.
    """
    if len(header.inputs) != 1:
        raise InvalidInput(f"the model takes one input tensor; got {len(header.inputs)}")
    tensor = header.inputs[0]
    if tensor.datatype in ("BYTES", "BOOL"):
        raise InvalidInput(f"input {oip.quote(tensor.name)} must be numeric, not {tensor.datatype}")
    shape = tensor.shape
    expected = feature_count(runtime, feature_names)
    if len(shape) == 1 and expected is not None and shape[0] == expected:
        shape = [1, expected]  # one row, sent flat
    if len(shape) != 2:
        raise InvalidInput(f"input {oip.quote(tensor.name)} must have shape [rows, features]")
    check_batch(shape[0], shape[1], expected=expected, limits=limits, what="the input")


def tensor_batch(tensor: oip.Tensor, dtype: np.dtype[Any]) -> np.ndarray:
    """Return the model's batch from the one input `check_tensor` accepted.

    Raises:
        InvalidInput: see `to_batch`.
    """
    data = tensor.data
    is_json = tensor.parameters.get("binary_data_size") is None
    return to_batch(data.reshape(1, -1) if data.ndim == 1 else data, dtype, is_json=is_json)


# --- networks: named tensors of any rank, both protocols ----------------------------------------


def check_network_header(header: oip.InferHeader, *, runtime: Runtime, limits: InputLimits) -> None:
    """Refuse a V2 request whose declared tensors do not fit the network, before any value is read.

    O(inputs x dimensions): the names, each tensor's datatype, rank and dimensions (fixed ones
    equal, dynamic ones within the cost estimate's bounds and agreeing across inputs).

    Raises:
        InvalidInput: naming the tensor, and the dimension when one does not fit.
    """
    specs = runtime.tensor_inputs or ()
    sent = {tensor.name: tensor for tensor in header.inputs}
    _check_names(sent, specs)
    sizes: dict[str, tuple[str, int, int]] = {}
    for spec in specs:
        tensor = sent[spec.name]
        datatype = oip.to_datatype(spec.dtype)
        if tensor.datatype != datatype:
            raise InvalidInput(
                f"input {oip.quote(spec.name)} is {tensor.datatype}; the model takes {datatype}"
            )
        check_tensor_shape(spec, tensor.shape, sizes=sizes, limits=limits)


def check_feeds(feeds: Mapping[str, np.ndarray], *, runtime: Runtime, limits: InputLimits) -> None:
    """Refuse arrays made for another network (a shadow version's): names, dtypes and shapes.

    Raises:
        InvalidInput: naming the tensor, and the dimension when one does not fit.
    """
    specs = runtime.tensor_inputs or ()
    _check_names(feeds, specs)
    sizes: dict[str, tuple[str, int, int]] = {}
    for spec in specs:
        array = feeds[spec.name]
        if array.dtype != spec.dtype:
            raise InvalidInput(
                f"input {oip.quote(spec.name)} is {oip.to_datatype(array.dtype)}; the model "
                f"takes {oip.to_datatype(spec.dtype)}"
            )
        check_tensor_shape(spec, list(array.shape), sizes=sizes, limits=limits)


def rest_feeds(inputs: Any, *, runtime: Runtime, limits: InputLimits) -> dict[str, np.ndarray]:
    """Turn a REST request's `inputs` into a network's named input arrays.

    `inputs` is an object of tensors by input name, each nested lists (`{"input_ids": [[...]],
    "attention_mask": [[...]]}`); a network with one input also takes the nested lists alone.
    Every tensor's shape is read from its first elements and checked (`check_tensor_shape`),
    and the values counted against the element budget, before any array is built.

    Raises:
        InvalidInput: not such an object, a missing or unknown name, a shape that does not fit,
            too many values, ragged lists, or values that do not fit the input's dtype.
    """
    specs = runtime.tensor_inputs or ()
    if isinstance(inputs, list) and len(specs) == 1:
        inputs = {specs[0].name: inputs}
    if not isinstance(inputs, dict) or not inputs:
        names = _listed([spec.name for spec in specs[:LISTED_NAMES]], len(specs))
        raise InvalidInput(
            f"inputs must be an object of the model's input tensors by name: {names}"
        )
    _check_names(inputs, specs)
    sizes: dict[str, tuple[str, int, int]] = {}
    shapes = []
    total = 0
    for spec in specs:
        shape = _nested_shape(inputs[spec.name], len(spec.shape))
        check_tensor_shape(spec, shape, sizes=sizes, limits=limits)
        total += int(np.prod(shape, dtype=np.int64)) if shape else 1
        if total > limits.max_elements:
            raise InvalidInput(
                f"the inputs hold more than the {limits.max_elements} values allowed per request"
            )
        shapes.append(shape)
    feeds = {}
    for spec, shape in zip(specs, shapes, strict=True):
        value = inputs[spec.name]
        try:
            feeds[spec.name] = oip.json_tensor(
                spec.name, oip.to_datatype(spec.dtype), shape, value if shape else [value]
            )
        except oip.OIPError as exc:
            raise InvalidInput(exc.message) from None
    return feeds


def check_tensor_shape(
    spec: TensorSpec,
    shape: list[int],
    *,
    sizes: dict[str, tuple[str, int, int]],
    limits: InputLimits,
) -> None:
    """Refuse a tensor shape that does not fit an input; `sizes` collects the dynamic dimensions
    seen so far (symbol -> (input, axis, size)), to check that inputs sharing one agree.

    Raises:
        InvalidInput: naming the input and the dimension.
    """
    name = f"input {oip.quote(spec.name)}"
    if len(shape) != len(spec.shape):
        raise InvalidInput(
            f"{name} has {len(shape)} dimensions {_dims(shape)}; the model takes "
            f"{len(spec.shape)} {_dims(spec.shape)} (-1: any size)"
        )
    for axis, (size, expected) in enumerate(zip(shape, spec.shape, strict=True)):
        if expected != -1:
            if size != expected:
                raise InvalidInput(
                    f"{name}: dimension {axis} is {size}; the model takes {expected} "
                    f"(shape {_dims(spec.shape)}, -1: any size)"
                )
            continue
        symbol = spec.symbols[axis]
        if size == 0:
            raise InvalidInput(
                f"{name}: dimension {axis} is 0" + (" (no rows)" if axis == 0 else "")
            )
        if symbol == ROWS and size > limits.max_rows:
            raise InvalidInput(
                f"{name}: {size} rows (dimension 0) is more than the {limits.max_rows} allowed "
                "per request"
            )
        if spec.bounds is not None and size > spec.bounds[axis] and symbol != ROWS:
            # Rows past the estimate's are the runtime's refusal (InferenceLimitExceeded).
            raise InvalidInput(
                f"{name}: dimension {axis} is {size}, more than the {spec.bounds[axis]} this "
                "model is admitted for within this server's cost budgets"
            )
        if symbol is None:
            continue
        seen = sizes.setdefault(symbol, (spec.name, axis, size))
        if seen[2] != size:
            raise InvalidInput(
                f"{name}: dimension {axis} is {size} but input {oip.quote(seen[0])} dimension "
                f"{seen[1]} is {seen[2]}; the model takes them equal ({symbol})"
            )


def _check_names(sent: Mapping[str, Any], specs: Sequence[TensorSpec]) -> None:
    if len(sent) == len(specs) and all(spec.name in sent for spec in specs):
        return
    names = [spec.name for spec in specs]
    missing = [name for name in names if name not in sent]
    n_unknown = len(sent) - (len(names) - len(missing))
    wanted = set(names)
    unknown = list(itertools.islice((key for key in sent if key not in wanted), LISTED_NAMES))
    parts = [f"the model takes the inputs {_listed(names[:LISTED_NAMES], len(names))}"]
    if missing:
        parts.append("missing " + _listed(missing[:LISTED_NAMES], len(missing)))
    if n_unknown:
        parts.append("unknown " + _listed([str(key) for key in unknown], n_unknown))
    raise InvalidInput("; ".join(parts))


def _nested_shape(value: Any, rank: int) -> list[int]:
    """Return the shape of nested lists as read from their first elements (at most rank + 1
    levels: one more is already a mismatch). Ragged lists are found when the array is built."""
    shape: list[int] = []
    while isinstance(value, list) and len(shape) <= rank:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _dims(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
