"""One prediction as the log keeps it: the record, built in one place (`PredictionRecord.of`),
and the row it becomes (payloads serialised once, within the log's budget)."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import orjson

from modelyard.db.types import utcnow, uuid7

if TYPE_CHECKING:
    from modelyard.predictions.targets import Target

log = logging.getLogger(__name__)

# Room an error's truncation note takes, within the payload budget.
_MARKER_BYTES = 64


class PredictionStatus(StrEnum):
    SUCCESS = "success"
    ERROR = "error"


@dataclass(slots=True)
class PredictionRecord:
    """One prediction as the predict endpoints hand it to the log."""

    id: uuid.UUID
    model_id: uuid.UUID | None
    version_id: uuid.UUID | None
    version: int | None
    owner_id: uuid.UUID | None  # the model's owner
    user_id: uuid.UUID | None  # the caller
    api_key_id: uuid.UUID | None  # the caller's API key, when it used one
    protocol: str  # "rest" | "v2"
    status: PredictionStatus
    error: str | None
    # JSON-safe values (lists, numeric arrays) or None; `record` turns them into JSON at once.
    inputs: Any
    outputs: Any
    n_rows: int
    inference_time_ms: float | None
    created_at: datetime  # aware UTC
    # A shadow prediction (see `modelyard.predictions.shadow`): the primary it copies and how
    # it compared with it (classifiers: rows with the same label; regressors: absolute
    # differences summed over the rows).
    shadow: bool = False
    shadow_of: uuid.UUID | None = None
    agreed_rows: int | None = None
    abs_diff_sum: float | None = None

    @classmethod
    def of(
        cls,
        target: Target,
        *,
        user_id: uuid.UUID | None,
        api_key_id: uuid.UUID | None,
        protocol: str,
        n_rows: int,
        error: str | None = None,
        inputs: Any = None,
        outputs: Any = None,
        inference_time_ms: float | None = None,
        prediction_id: uuid.UUID | None = None,
        shadow_of: uuid.UUID | None = None,
        agreed_rows: int | None = None,
        abs_diff_sum: float | None = None,
    ) -> PredictionRecord:
        """The record of one call on `target`, made now: a success without `error`, else a
        failure; a shadow prediction with `shadow_of` (the primary prediction)."""
        return cls(
            id=prediction_id or uuid7(),
            model_id=target.model_id,
            version_id=target.version_id,
            version=target.version,
            owner_id=target.owner_id,
            user_id=user_id,
            api_key_id=api_key_id,
            protocol=protocol,
            status=PredictionStatus.SUCCESS if error is None else PredictionStatus.ERROR,
            error=error,
            inputs=inputs,
            outputs=outputs,
            n_rows=n_rows,
            inference_time_ms=inference_time_ms,
            created_at=utcnow(),
            shadow=shadow_of is not None,
            shadow_of=shadow_of,
            agreed_rows=agreed_rows,
            abs_diff_sum=abs_diff_sum,
        )


FIELDS = tuple(f.name for f in dataclasses.fields(PredictionRecord))
# Fields added after spool files may have been written: an older line replays with these.
LATER_FIELDS: dict[str, Any] = {
    "shadow": False,
    "shadow_of": None,
    "agreed_rows": None,
    "abs_diff_sum": None,
}
Row = dict[str, Any]


def storable(rec: PredictionRecord, *, payloads: bool, max_bytes: int) -> Row:
    """Return the row to insert: payloads made strictly JSON (NaN becomes null) or left out,
    each payload and the error at most `max_bytes` long, no NUL in text.

    A payload past the budget is stored as `{"truncated": true, "bytes": <its size as JSON>,
    "preview": "<its first bytes, as text>"}`; an error past it is cut and says its size. One
    15 MB failing request stored 30 MB, and listing a hundred such rows took 1.6 GiB.
    """
    row = {name: getattr(rec, name) for name in FIELDS}
    row["inputs"] = _json_safe(rec.inputs, max_bytes) if payloads else None
    row["outputs"] = _json_safe(rec.outputs, max_bytes) if payloads else None
    error = rec.error
    if error is not None:
        if "\x00" in error:
            # PostgreSQL text cannot hold NUL; the message stays readable without it.
            error = error.replace("\x00", "\ufffd")
        # Characters are 1-4 bytes: only a long message needs encoding to be measured.
        if len(error) * 4 > max_bytes and len(encoded := error.encode()) > max_bytes:
            kept = encoded[: max_bytes - _MARKER_BYTES].decode(errors="ignore")
            error = f"{kept}... (truncated from {len(encoded)} bytes)"
        row["error"] = error
    return row


def _json_safe(value: Any, max_bytes: int) -> Any:
    if value is None or isinstance(value, orjson.Fragment):
        return value
    try:
        # Serialised once, here (NaN becomes null); the JSON column and the spool embed the
        # fragment as it is, without building the payload again as Python objects.
        data = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        log.warning("prediction_log_payload_not_json", extra={"type": type(value).__name__})
        return None
    return orjson.Fragment(data if len(data) <= max_bytes else _truncated(data, max_bytes))


def _truncated(data: bytes, max_bytes: int) -> bytes:
    """Return what stands for a payload past the budget: valid JSON of at most `max_bytes`."""

    def marker(keep: int) -> bytes:
        # A cut through a UTF-8 sequence drops its bytes; JSON text has no other invalid ones.
        preview = data[: max(0, keep)].decode(errors="ignore")
        return orjson.dumps({"truncated": True, "bytes": len(data), "preview": preview})

    fixed = len(marker(0))
    keep = max_bytes - fixed
    stored = marker(keep)
    if len(stored) > max_bytes:
        # Escaping made the preview longer (a quote is written \"): shrink it in proportion...
        keep = keep * (max_bytes - fixed) // (len(stored) - fixed)
        stored = marker(keep)
    while len(stored) > max_bytes:
        # ...and if this prefix escapes more than the average, cut the excess: each byte cut
        # shortens the marker by at least one, so this pass always fits.
        keep -= len(stored) - max_bytes
        stored = marker(keep)
    return stored
