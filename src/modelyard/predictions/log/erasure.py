"""Taking a person out of the prediction log: the numbers stay, every link to them goes."""

from __future__ import annotations

import uuid

from sqlalchemy import case, null, or_, update
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.db.sql import rowcount
from modelyard.db.tables import Prediction, prediction_rollups


async def unlink_person(db: AsyncSession, user_id: uuid.UUID) -> tuple[int, int]:
    """Take the person out of the prediction log and the rollups (no commit); return the rows
    changed in each.

    A logged prediction loses, on the calls the person made, the caller (`user_id`,
    `api_key_id`), the payloads (`inputs`, `outputs`) and the `error` of a failed call (which
    quotes what was sent); on the calls made on their models, the owner (`owner_id`). Rollups of
    their models lose their `owner_id`. One UPDATE per table (on PostgreSQL it spans the log's
    partitions); every SET expression reads the row as it was, so a call the person made on
    their own model loses both links.
    """
    made = Prediction.user_id == user_id
    owned = Prediction.owner_id == user_id
    predictions = await db.execute(
        update(Prediction)
        .where(or_(made, owned))
        .values(
            user_id=case((made, null()), else_=Prediction.user_id),
            api_key_id=case((made, null()), else_=Prediction.api_key_id),
            inputs=case((made, null()), else_=Prediction.inputs),
            outputs=case((made, null()), else_=Prediction.outputs),
            # An error quotes the input it refused ("unknown alice@example.com").
            error=case((made, null()), else_=Prediction.error),
            owner_id=case((owned, null()), else_=Prediction.owner_id),
        )
        .execution_options(synchronize_session=False)
    )
    rollups = await db.execute(
        update(prediction_rollups)
        .where(prediction_rollups.c.owner_id == user_id)
        .values(owner_id=None)
    )
    return rowcount(predictions), rowcount(rollups)
