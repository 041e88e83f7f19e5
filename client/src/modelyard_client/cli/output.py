"""How commands print: rich tables for people, JSON (`--json`) for scripts."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import date, datetime
from enum import Enum
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

# Columns whose values are copied into the next command: never wrapped, never cut with "…".
WHOLE = frozenset(
    {"id", "name", "model_name", "path", "input_path", "output_path", "prefix", "key"}
)


def jsonable(value: Any) -> Any:
    """Dataclasses, pages, times and enums as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()  # a network's output tensor, or a NumPy scalar
    return value


def print_json(value: Any) -> None:
    """Print `value` as JSON on stdout."""
    # Plain print, not rich: no wrapping or markup may touch what scripts parse.
    print(json.dumps(jsonable(value), indent=2))  # noqa: T201 - the command's output


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(jsonable(value))
    return str(value)


def print_table(
    rows: Sequence[Any],
    columns: Sequence[str],
    *,
    title: str | None = None,
    total: int | None = None,
) -> None:
    """Print objects as a table of the given attributes."""
    console = Console()
    if not rows:
        console.print("(none)" if total in (None, 0) else f"(none on this page; {total} in total)")
        return
    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        whole = column in WHOLE or column.endswith("_id")
        table.add_column(column, no_wrap=whole, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(getattr(row, c, None)) for c in columns))
    _print_whole(console, table)
    if total is not None and total > len(rows):
        console.print(f"{len(rows)} of {total} (use --limit/--offset for more)")


def print_record(value: Any, fields: Sequence[str] | None = None) -> None:
    """Print one object as a two-column table of its fields."""
    console = Console()
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    data = jsonable(value)
    for name in fields or list(data):
        table.add_row(name, _cell(data.get(name)))
    _print_whole(console, table)


def _print_whole(console: Console, table: Table) -> None:
    """Print the table, wider than the terminal if its unwrappable cells need it: rich would
    otherwise cut them with "…", and a cut ID cannot be copied into the next command."""
    unbounded = Console(width=1_000_000)
    needed = Measurement.get(unbounded, unbounded.options, table).minimum
    if needed > console.width:
        console = Console(width=needed)
    console.print(table)


def say(message: str) -> None:
    """A human message on stderr (keeps stdout for results)."""
    Console(stderr=True).print(message, highlight=False, markup=False)
