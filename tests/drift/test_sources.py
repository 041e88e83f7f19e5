"""Reading the prediction log back for drift: keyset pages in both directions, bounds, windows."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.db.tables import Prediction
from modelyard.db.types import utcnow
from modelyard.drift.sources import LOG_PAGE_BYTES, LOG_PAGE_MIN, Feature, sample_log

FEATURES = [Feature("a", "float"), Feature("b", "float")]
# The smallest pages: many of them for a few hundred predictions.
SMALL_PAGES = LOG_PAGE_BYTES // LOG_PAGE_MIN


async def log_rows(db: AsyncSession, model_id: uuid.UUID, version_id: uuid.UUID) -> list[float]:
    """Log 95 one-row predictions, several sharing a time, and return their `a` values, oldest
    first (in the log's (created_at, id) order)."""
    start = utcnow() - timedelta(hours=1)
    rows = []
    values: dict[uuid.UUID, float] = {}
    for i in range(95):
        rows.append(
            Prediction(
                id=uuid.uuid4(),
                model_id=model_id,
                version_id=version_id,
                version=1,
                protocol="rest",
                status="success",
                # Every fourth call is a record by name; the rest are rows of values.
                inputs=[{"b": -1.0, "a": float(i)}] if i % 4 == 0 else [[float(i), -1.0]],
                n_rows=1,
                # Ties: five predictions a second, across page edges.
                created_at=start + timedelta(seconds=i // 5),
            )
        )
        values[rows[-1].id] = float(i)
    db.add_all(rows)
    await db.commit()
    ordered = sorted(rows, key=lambda p: (p.created_at, p.id))
    return [values[p.id] for p in ordered]


@pytest.mark.parametrize("newest_first", [True, False])
async def test_pages_read_each_prediction_once_in_order_up_to_the_bound(
    db: AsyncSession, newest_first: bool
) -> None:
    model_id, version_id = uuid.uuid4(), uuid.uuid4()
    expected = await log_rows(db, model_id, version_id)
    # Another version's and a failure's rows are never read.
    db.add_all(
        Prediction(
            id=uuid.uuid4(),
            model_id=model_id,
            version_id=other,
            version=2,
            protocol="rest",
            status=status,
            inputs=[[1e9, 1e9]],
            n_rows=1,
            created_at=utcnow(),
        )
        for other, status in ((uuid.uuid4(), "success"), (version_id, "error"))
    )
    await db.commit()
    if newest_first:
        expected.reverse()
    window = {"since": utcnow() - timedelta(days=1), "until": utcnow() + timedelta(seconds=1)}
    every = await sample_log(
        db, model_id=model_id, version_id=version_id, features=FEATURES, max_rows=1_000,
        newest_first=newest_first, max_payload_bytes=SMALL_PAGES, **window,
    )  # fmt: skip
    assert every.rows == every.predictions == 95
    assert every.arrays()["a"].tolist() == expected
    assert every.arrays()["b"].tolist() == [-1.0] * 95

    bounded = await sample_log(
        db, model_id=model_id, version_id=version_id, features=FEATURES, max_rows=57,
        newest_first=newest_first, max_payload_bytes=SMALL_PAGES, **window,
    )  # fmt: skip
    assert bounded.rows == 57
    assert bounded.arrays()["a"].tolist() == expected[:57]

    before = await sample_log(
        db, model_id=model_id, version_id=version_id, features=FEATURES, max_rows=1_000,
        newest_first=newest_first, max_payload_bytes=SMALL_PAGES,
        since=window["since"], until=utcnow() - timedelta(hours=2),
    )  # fmt: skip
    assert (before.rows, before.predictions) == (0, 0)


async def test_unreadable_inputs_are_skipped_and_counted(db: AsyncSession) -> None:
    model_id, version_id = uuid.uuid4(), uuid.uuid4()
    now = utcnow()
    inputs = [
        {"truncated": True, "bytes": 70_000, "preview": "[[1.0, 2"},  # cut by the budget
        None,  # payloads not logged
        [[1.0, 2.0, 3.0]],  # not this schema's width
        [[4.0, "x"], {"a": 5.0}],  # readable: non-numbers and absent names are missing
    ]
    db.add_all(
        Prediction(
            id=uuid.uuid4(),
            model_id=model_id,
            version_id=version_id,
            version=1,
            protocol="rest",
            status="success",
            inputs=value,
            n_rows=7 + i,
            created_at=now - timedelta(seconds=i),
        )
        for i, value in enumerate(inputs)
    )
    await db.commit()
    sample = await sample_log(
        db, model_id=model_id, version_id=version_id, features=FEATURES, max_rows=100,
        newest_first=True, max_payload_bytes=65_536, since=now - timedelta(hours=1),
        until=now + timedelta(seconds=1),
    )  # fmt: skip
    assert (sample.skipped_predictions, sample.skipped_rows) == (3, 7 + 8 + 9)
    assert (sample.predictions, sample.rows) == (1, 2)
    arrays = sample.arrays()
    assert arrays["a"].tolist() == [4.0, 5.0]
    assert np.isnan(arrays["b"]).all()
