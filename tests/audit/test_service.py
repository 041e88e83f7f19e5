"""The audit log's chain written and checked without an app (both databases): rows numbered from
1, each hashing the one before it, the actor an action names, and the signal live streams wait
on. Tampering with rows is tested through the API in test_audit.py."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from modelyard.audit import service as audit
from modelyard.changes.events import Action
from modelyard.db.engine import make_sessionmaker
from modelyard.db.tables import AuditEvent


def uploaded(n: int, **fields: object) -> Action:
    return Action(name="file.uploaded", target_type="file", target_id=f"f{n}", **fields)  # type: ignore[arg-type]


async def test_an_empty_log_is_intact_and_has_no_head(db: AsyncSession) -> None:
    result = await audit.verify(db)

    assert result.intact
    assert (result.checked, result.head_seq, result.head_hash) == (0, None, None)
    assert await audit.head(db) == 0


async def test_rows_are_numbered_from_one_and_each_hashes_the_one_before(
    engine: AsyncEngine, db: AsyncSession
) -> None:
    log = audit.AuditLog(make_sessionmaker(engine))

    written = [await log.append(uploaded(n)) for n in range(3)]

    assert [row.seq for row in written] == [1, 2, 3]
    assert written[0].prev_hash == audit.GENESIS
    assert [row.prev_hash for row in written[1:]] == [row.hash for row in written[:-1]]
    stored = list(await db.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    assert [audit.row_digest(row) for row in stored] == [row.hash for row in written]
    result = await audit.verify(db)
    assert (result.intact, result.checked, result.head_seq, result.head_hash) == (
        True,
        3,
        3,
        written[-1].hash,
    )
    assert await audit.head(db) == 3


async def test_concurrent_writers_on_a_fresh_log_number_without_gaps(
    engine: AsyncEngine, db: AsyncSession
) -> None:
    log = audit.AuditLog(make_sessionmaker(engine))

    written = await asyncio.gather(*(log.append(uploaded(n)) for n in range(8)))

    assert sorted(row.seq for row in written) == list(range(1, 9))
    assert (await audit.verify(db)).checked == 8


async def test_the_actor_an_action_names_is_recorded_and_outside_a_request_none(
    engine: AsyncEngine,
) -> None:
    log = audit.AuditLog(make_sessionmaker(engine))
    actor, owner = uuid.uuid4(), uuid.uuid4()

    named = await log.append(uploaded(1, actor_user_id=actor, owner_id=owner))
    unnamed = await log.append(uploaded(2, owner_id=owner))

    assert (named.actor_user_id, named.owner_id) == (actor, owner)
    assert (unnamed.actor_user_id, unnamed.actor_api_key_id) == (None, None)
    assert (unnamed.client_address, unnamed.request_id) == (None, None)


async def test_a_waiter_on_appended_wakes_when_a_row_is_appended(engine: AsyncEngine) -> None:
    log = audit.AuditLog(make_sessionmaker(engine))
    waiter = asyncio.create_task(log.appended())
    await asyncio.sleep(0)  # one loop turn (no time): the waiter is blocked on the signal
    assert not waiter.done()

    await log.append(uploaded(1))

    async with asyncio.timeout(30):
        await waiter
