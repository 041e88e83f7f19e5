"""Prediction inputs: rows, records, NumPy arrays and pandas DataFrames as the API's JSON."""

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


def to_rows(inputs: Any) -> Rows:
    """Turn rows, records, a NumPy array (one row per line; 1-D is one row) or a DataFrame
    (records by column name, matched against the version's features) into JSON rows."""
    module = type(inputs).__module__.split(".")[0]
    if module == "pandas" and hasattr(inputs, "to_dict"):
        # By name: the server matches columns to the input schema in any order.
        records = inputs.to_dict(orient="records")
        return [{str(k): _plain(v) for k, v in record.items()} for record in records]
    if module == "numpy" and hasattr(inputs, "tolist"):
        values = inputs.tolist()
        if values and not isinstance(values[0], list):
            values = [values]
        return [[_plain(v) for v in row] for row in values]
    if isinstance(inputs, Mapping):
        return [{str(k): _plain(v) for k, v in inputs.items()}]
    if isinstance(inputs, Sequence) and not isinstance(inputs, str | bytes):
        rows = list(inputs)
        if not rows:
            return []
        if all(isinstance(row, Mapping) for row in rows):
            return [{str(k): _plain(v) for k, v in row.items()} for row in rows]
        if all(isinstance(row, Sequence) and not isinstance(row, str | bytes) for row in rows):
            return [[_plain(v) for v in row] for row in rows]
        # A flat list of numbers is one row.
        return [[_plain(v) for v in rows]]
    raise InvalidInput(
        f"cannot predict on {type(inputs).__name__}: give rows (lists), records (dicts), "
        "a NumPy array or a pandas DataFrame"
    )


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


def read_input_file(path: Path) -> Rows:
    """Read prediction rows from a .json file (rows, records or {"inputs": ...}), a .csv
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
    return to_rows(data)


def _number(text: str | None) -> Any:
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
