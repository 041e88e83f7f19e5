"""Prediction inputs as the API's JSON: rows, records, NumPy arrays and pandas DataFrames for a
table; NumPy arrays, torch tensors or nested lists, one or a dict by input name, for a network."""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelyard_client.errors import InvalidInput

Rows = list[list[Any]] | list[dict[str, Any]]
Tensors = dict[str, Any]


def to_inputs(inputs: Any) -> Rows | Tensors:
    """Turn what `predict` was given into the request's `inputs`, without asking the server
    what the model takes: a dict holding an array, a tensor or a list is a network's input
    tensors by name (nested lists; a scalar stays one value), any other dict is one record, and
    everything else goes through `to_rows` (a single array or tensor is one input's nested lists,
    which a one-input network takes as they are).

    A dict of one tensor is sent as that tensor alone: a one-input network takes it so, and so
    does a module whose one input has fixed dimensions past the batch, served as a table.
    """
    if isinstance(inputs, Mapping) and any(_is_array(v) for v in inputs.values()):
        tensors = {str(name): _nested(value) for name, value in inputs.items()}
        if len(tensors) == 1:
            (only,) = tensors.values()
            if isinstance(only, list):
                return only
        return tensors
    return to_rows(inputs)


def _is_array(value: Any) -> bool:
    if _module(value) in {"numpy", "torch"}:
        return hasattr(value, "ndim") and value.ndim > 0
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _module(value: Any) -> str:
    return type(value).__module__.split(".")[0]


def _nested(value: Any) -> Any:
    """An array, a tensor or (nested) lists as nested lists of plain, finite values."""
    if _module(value) == "torch" and hasattr(value, "detach"):
        # torch.Tensor.tolist() keeps every dtype (bfloat16 too) and needs no NumPy.
        value = value.detach().cpu()
        if value.is_floating_point() and not bool(value.isfinite().all()):
            raise InvalidInput("inputs must be finite numbers, got NaN or infinity")
        return value.tolist()
    if _module(value) == "numpy" and hasattr(value, "tolist"):
        import numpy as np

        if value.dtype.kind in "fc" and not bool(np.isfinite(value).all()):
            raise InvalidInput("inputs must be finite numbers, got NaN or infinity")
        return value.tolist()
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_nested(v) for v in value]
    return _plain(value)


def to_rows(inputs: Any) -> Rows:
    """Turn rows, records, a NumPy array (one row per line; 1-D is one row) or a DataFrame
    (records by column name, matched against the version's features) into JSON rows."""
    module = _module(inputs)
    if module in {"numpy", "torch"} and hasattr(inputs, "tolist"):
        # Nested as its shape: rows for a table, any rank for a network; 1-D is one row.
        values = _nested(inputs)
        if not isinstance(values, list) or (values and not isinstance(values[0], list)):
            values = [values]
        return values
    if module == "pandas" and hasattr(inputs, "to_dict"):
        # By name: the server matches columns to the input schema in any order.
        records = inputs.to_dict(orient="records")
        return [{str(k): _plain(v) for k, v in record.items()} for record in records]
    if isinstance(inputs, Mapping):
        return [{str(k): _plain(v) for k, v in inputs.items()}]
    if isinstance(inputs, Sequence) and not isinstance(inputs, str | bytes):
        rows = list(inputs)
        if not rows:
            return []
        if all(isinstance(row, Mapping) for row in rows):
            return [{str(k): _plain(v) for k, v in row.items()} for row in rows]
        if all(isinstance(row, Sequence) and not isinstance(row, str | bytes) for row in rows):
            return [[_nested(v) for v in row] for row in rows]
        # A flat list of numbers is one row.
        return [[_nested(v) for v in rows]]
    raise InvalidInput(
        f"cannot predict on {type(inputs).__name__}: give rows (lists), records (dicts), "
        "a NumPy array, a torch tensor, a pandas DataFrame, or a dict of tensors by input name"
    )


def as_arrays(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """A network's output tensors by name as NumPy arrays, or as nested lists without NumPy."""
    try:
        import numpy as np
    except ImportError:
        return dict(outputs)
    return {name: np.asarray(value) for name, value in outputs.items()}


def _plain(value: Any) -> Any:
    """A NumPy scalar as its Python value; refuse what JSON cannot carry."""
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"inputs must be finite numbers, got {value}")
    return value


def finite(what: str, value: Any) -> float:
    """A metric's value as a float; NaN, infinity and non-numbers are refused."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be a number, got {value!r}") from exc
    if not math.isfinite(number):
        raise InvalidInput(f"{what} must be a finite number, got {number}")
    return number


def read_input_file(path: Path) -> Rows | Tensors:
    """Read prediction inputs from a .json file (rows, records, a network's tensors by input
    name, or any of these as {"inputs": ...}), a .csv
    file with a header row (records by column name), or JSON on stdin (`-`)."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from exc
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [{k: _number(v) for k, v in row.items() if k is not None} for row in reader]
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and "inputs" in data:
        data = data["inputs"]
    return to_inputs(data)


def _number(text: str | None) -> Any:
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
