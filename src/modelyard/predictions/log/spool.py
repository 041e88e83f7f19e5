"""The spool's file format: JSON lines of rows, claimed by one replayer at a time (`flock`)."""

from __future__ import annotations

import fcntl
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from modelyard.observability.metrics import Metrics
from modelyard.predictions.log.record import FIELDS, LATER_FIELDS, Row

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".jsonl"
REPLAYING_SUFFIX = ".replaying"
_UUID_FIELDS = ("id", "model_id", "version_id", "owner_id", "user_id", "api_key_id", "shadow_of")


def _uuid_subclasses(value: Any) -> str:
    """Serialise what orjson leaves out: UUID subclasses (asyncpg returns its own)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(type(value).__name__)


def lines(rows: Iterable[Row], metrics: Metrics) -> bytes:
    out = bytearray()
    for row in rows:
        try:
            out += orjson.dumps(row, default=_uuid_subclasses, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:
            try:
                out += orjson.dumps(
                    {**row, "inputs": None, "outputs": None}, default=_uuid_subclasses
                )
            except TypeError:
                metrics.log_rows_dropped.inc()
                log.error(
                    "prediction_log_row_unserializable", extra={"prediction_id": str(row["id"])}
                )
                continue
            log.warning("prediction_log_payload_not_json", extra={"prediction_id": str(row["id"])})
        out += b"\n"
    return bytes(out)


def spool_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.suffix in (SPOOL_SUFFIX, REPLAYING_SUFFIX)]
    return sorted(files, key=lambda p: p.stem)


def claim(path: Path) -> tuple[IO[bytes], Path, list[Row], int] | None:
    """Lock a spool file, rename it `.replaying` and read it; None if another process has it.

    The returned file holds the lock until it is closed.
    """
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if path.suffix == SPOOL_SUFFIX:
            replaying = path.with_suffix(REPLAYING_SUFFIX)
            path.rename(replaying)
            path = replaying
        rows, bad = _read_spool(file)
    except (BlockingIOError, FileNotFoundError):
        # Locked: another process appends to it or replays it. Gone: replayed meanwhile.
        file.close()
        return None
    except BaseException:
        file.close()
        raise
    return file, path, rows, bad


def _read_spool(file: IO[bytes]) -> tuple[list[Row], int]:
    """Parse a spool file; the count is of lines that are not a record (a torn last write)."""
    rows: list[Row] = []
    bad = 0
    for line in file:
        if not line.strip():
            continue
        try:
            rows.append(parse_row(orjson.loads(line)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            bad += 1
    return rows, bad


def parse_row(data: dict[str, Any]) -> Row:
    row = {name: data[name] if name in data else LATER_FIELDS[name] for name in FIELDS}
    for name in _UUID_FIELDS:
        if row[name] is not None:
            row[name] = uuid.UUID(row[name])
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    if row["created_at"].tzinfo is None:
        raise ValueError("naive created_at")
    return row
