"""Recording actions in the audit log, reading it, and checking its chain.

Every row carries `hash = sha256(prev_hash + "\\n" + canonical JSON of the row)`, where
`prev_hash` is the hash of the row numbered one less (64 zeros before the first). Changing,
removing or inserting a row breaks the chain from there on; `verify` finds the first break.
Rows are numbered without gaps: a writer takes the next number, and of two writers that took
the same one the second retries (its insert collides on the primary key).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, func, or_, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelyard.changes.events import Action
from modelyard.db.tables import AuditEvent, User
from modelyard.db.types import utcnow
from modelyard.edge import context

log = logging.getLogger(__name__)

GENESIS = "0" * 64
# Writers that collide on a number retry; this many collisions in a row means something else.
APPEND_ATTEMPTS = 50
# One lock for every writer of the chain on PostgreSQL (an arbitrary, fixed advisory lock id).
CHAIN_LOCK = 0x6D6F64656C617564  # "modelaud"
VERIFY_BATCH = 1_000


def row_digest(row: AuditEvent) -> str:
    """Return the hash `row` must carry, given its fields and `prev_hash`."""
    fields = {
        "seq": row.seq,
        "at": row.at.isoformat(timespec="microseconds"),
        "action": row.action,
        "outcome": row.outcome,
        "actor_user_id": _str(row.actor_user_id),
        "actor_api_key_id": _str(row.actor_api_key_id),
        "target_type": row.target_type,
        "target_id": row.target_id,
        "owner_id": _str(row.owner_id),
        "model_id": _str(row.model_id),
        "client_address": row.client_address,
        "user_agent": row.user_agent,
        "request_id": row.request_id,
        "details": row.details,
    }
    payload = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(row.prev_hash.encode() + b"\n" + payload).hexdigest()


def _str(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


# Details that may quote what a caller sent: a failed batch job's `error` names a cell value
# or a record key ("row 3: 'alice@example.com' is not a number"), and such a value can be
# personal data. The audit log is kept for ever and outlives erasure, so these are redacted
# when the row is written (whatever action carries them, at any depth): the row keeps that
# there was one, never the text.
REQUEST_VALUE_KEYS = frozenset(
    {"error", "errors", "detail", "message", "inputs", "outputs", "value", "values"}
)
REDACTED = "[redacted: may quote request values]"


def redact(details: Any) -> Any:
    """Return `details` with the values of `REQUEST_VALUE_KEYS` replaced by `REDACTED` (a
    None stays None: "no error" is worth keeping)."""
    if isinstance(details, dict):
        return {
            key: REDACTED if key in REQUEST_VALUE_KEYS and value is not None else redact(value)
            for key, value in details.items()
        }
    if isinstance(details, list):
        return [redact(item) for item in details]
    return details


def _details(action: Action) -> Any:
    # Round-tripped through JSON now, so that the hash covers what the database gives back.
    return redact(orjson.loads(orjson.dumps(dict(action.details), default=str)))


class AuditLog:
    """Appends the actions of this process to the audit log (an `Events` action sink)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self._appended = asyncio.Event()

    async def appended(self) -> None:
        """Return once this process appends a row."""
        await self._appended.wait()

    async def __call__(self, action: Action) -> None:
        await self.append(action)

    async def append(self, action: Action) -> AuditEvent:
        """Record `action` as the chain's next row, with who did it and from where.

        The caller is the request's (`modelyard.edge.context`) unless the action names its actor.
        """
        request = context.current()
        actor_user_id = action.actor_user_id
        actor_api_key_id = None
        if actor_user_id is None and request is not None:
            actor_user_id, actor_api_key_id = request.user_id, request.api_key_id
        details = _details(action)
        for _ in range(APPEND_ATTEMPTS):
            async with self.sessions() as db:
                try:
                    row = await self._append(
                        db,
                        AuditEvent(
                            action=action.name,
                            outcome=action.outcome,
                            actor_user_id=actor_user_id,
                            actor_api_key_id=actor_api_key_id,
                            target_type=action.target_type,
                            target_id=action.target_id,
                            owner_id=action.owner_id,
                            model_id=action.model_id,
                            client_address=request.client_address if request else None,
                            user_agent=request.user_agent if request else None,
                            request_id=request.request_id if request else None,
                            details=details,
                        ),
                    )
                except (IntegrityError, OperationalError) as exc:
                    await db.rollback()
                    # Another writer took this number first, or (SQLite) wrote since this
                    # transaction read: try again. A database that is down is not retried.
                    if isinstance(exc, OperationalError) and db.get_bind().dialect.name != "sqlite":
                        raise
                    continue
                appended, self._appended = self._appended, asyncio.Event()
                appended.set()
                return row
        raise RuntimeError(f"could not append to the audit log in {APPEND_ATTEMPTS} attempts")

    async def _append(self, db: AsyncSession, row: AuditEvent) -> AuditEvent:
        if db.get_bind().dialect.name == "postgresql":
            # Writers queue here instead of colliding and retrying.
            await db.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": CHAIN_LOCK})
        last = (
            await db.execute(
                select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
            )
        ).first()
        row.seq = 1 if last is None else last.seq + 1
        row.prev_hash = GENESIS if last is None else last.hash
        row.at = utcnow()
        row.hash = row_digest(row)
        db.add(row)
        await db.commit()
        return row


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditFilter:
    action: str | None = None
    outcome: str | None = None
    actor_user_id: uuid.UUID | None = None
    actor_api_key_id: uuid.UUID | None = None
    owner_id: uuid.UUID | None = None
    target_type: str | None = None
    target_id: str | None = None
    model_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None

    def selects_action(self, action: str) -> bool:
        """Tell whether the `action` filter takes `action` (what `conditions` asks in SQL)."""
        if self.action is None:
            return True
        return (
            action.startswith(self.action) if self.action.endswith(".") else action == self.action
        )

    def conditions(self) -> list[ColumnElement[bool]]:
        """Return the WHERE conditions of the filters given."""
        where: list[ColumnElement[bool]] = []
        if self.action is not None:
            # `auth.` matches every action of a kind; `auth.login` one action.
            where.append(
                AuditEvent.action.startswith(self.action, autoescape=True)
                if self.action.endswith(".")
                else AuditEvent.action == self.action
            )
        for column, value in (
            (AuditEvent.outcome, self.outcome),
            (AuditEvent.actor_user_id, self.actor_user_id),
            (AuditEvent.actor_api_key_id, self.actor_api_key_id),
            (AuditEvent.owner_id, self.owner_id),
            (AuditEvent.target_type, self.target_type),
            (AuditEvent.target_id, self.target_id),
            (AuditEvent.model_id, self.model_id),
        ):
            if value is not None:
                where.append(column == value)
        if self.since is not None:
            where.append(AuditEvent.at >= self.since)
        if self.until is not None:
            where.append(AuditEvent.at < self.until)
        return where


def _visible(user: User, filters: AuditFilter, *, everything: bool) -> list[ColumnElement[bool]]:
    """The conditions of the rows `user` may see among those `filters` select: with
    `everything` all of them, else those about its account and things, and its own actions."""
    where = filters.conditions()
    if not everything:
        where.append(or_(AuditEvent.owner_id == user.id, AuditEvent.actor_user_id == user.id))
    return where


async def list_events(
    db: AsyncSession,
    user: User,
    filters: AuditFilter,
    *,
    everything: bool,
    limit: int,
    before: int | None,
) -> list[AuditEvent]:
    """Return up to `limit` rows, newest first, numbered below `before`: with `everything`
    every row, else the rows about `user`'s account and its things, and the actions it took.
    """
    where = _visible(user, filters, everything=everything)
    if before is not None:
        where.append(AuditEvent.seq < before)
    rows = await db.scalars(
        select(AuditEvent).where(*where).order_by(AuditEvent.seq.desc()).limit(limit)
    )
    return list(rows)


async def events_after(
    db: AsyncSession, user: User, filters: AuditFilter, *, everything: bool, after: int, limit: int
) -> list[AuditEvent]:
    """Return up to `limit` rows numbered above `after`, oldest first, that `list_events`
    would show."""
    where = _visible(user, filters, everything=everything)
    rows = await db.scalars(
        select(AuditEvent)
        .where(AuditEvent.seq > after, *where)
        .order_by(AuditEvent.seq)
        .limit(limit)
    )
    return list(rows)


async def head(db: AsyncSession) -> int:
    """Return the number of the newest row (0: none yet)."""
    return int(await db.scalar(select(func.max(AuditEvent.seq))) or 0)


# --- verifying ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verification:
    """What `verify` found: how many rows it checked, the last good one, and the first break."""

    checked: int
    head_seq: int | None
    head_hash: str | None
    broken_seq: int | None = None
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None


async def _rows_in_order(db: AsyncSession) -> AsyncIterator[AuditEvent]:
    """Yield every row, by number, from the lowest there is (not from 1: a row numbered 0 or
    below is listed by `GET /audit` as any other, so it is checked as any other)."""
    after: int | None = None
    while True:
        query = select(AuditEvent).order_by(AuditEvent.seq).limit(VERIFY_BATCH)
        if after is not None:
            query = query.where(AuditEvent.seq > after)
        rows = list(await db.scalars(query))
        for row in rows:
            yield row
        if len(rows) < VERIFY_BATCH:
            return
        after = rows[-1].seq
        db.expunge_all()


async def verify(db: AsyncSession) -> Verification:
    """Walk every row of the log in order (the chain starts at row 1); stop at the first row
    that breaks it: one numbered below 1, a gap, a wrong `prev_hash`, a changed row."""
    checked = 0
    expected_seq, expected_prev = 1, GENESIS
    head: tuple[int, str] | None = None

    def broken(row: AuditEvent, problem: str) -> Verification:
        seq, digest = head or (None, None)
        return Verification(checked, seq, digest, broken_seq=row.seq, problem=problem)

    async for row in _rows_in_order(db):
        if row.seq < 1:
            return broken(row, f"row {row.seq} is outside the chain (rows are numbered from 1)")
        if row.seq != expected_seq:
            return broken(row, f"row {expected_seq} is missing (the next row is {row.seq})")
        if row.prev_hash != expected_prev:
            return broken(row, f"row {row.seq} does not follow the hash of row {row.seq - 1}")
        if row_digest(row) != row.hash:
            return broken(row, f"row {row.seq} was changed after it was written")
        checked += 1
        head = (row.seq, row.hash)
        expected_seq, expected_prev = row.seq + 1, row.hash
    seq, digest = head or (None, None)
    return Verification(checked, seq, digest)
