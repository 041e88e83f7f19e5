"""The delivery worker: takes due deliveries, signs and sends them, records how it went.

Every server process (not a `serving` replica) runs one. Workers of every process and replica
share the `webhook_deliveries` table: a worker takes a due row by setting its `claimed_until`
in one conditional UPDATE (one claim at a time: PostgreSQL queues claims on an advisory lock,
SQLite runs one writer at a time), so that no delivery is ever sent by two of them at once. A
worker that dies mid-send leaves a claim that runs out after `claim_seconds`; the row is then
taken again (delivery is at least once: receivers deduplicate on `webhook-id`).

Fair between accounts: a receiver that never answers must delay its own account's deliveries
only. So an account has at most `account_concurrency` deliveries in flight, counted over every
process and replica (the unexpired claims of its rows), a claim takes the accounts' due rows in
turns (every account's oldest before anyone's second), and a process sends up to `concurrency`
deliveries at once, claiming again as soon as any one of them ends rather than after a batch.

A failed attempt (no 2xx: an error status, a redirect, a timeout, a refused address) is
retried after `BACKOFF[n]` (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: about 28 hours in all),
then the delivery is `failed` until someone redelivers it. Finished deliveries (delivered or
failed) are deleted `retention` after their last attempt, in bounded batches, by the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self

import orjson
from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelyard import __version__
from modelyard.changes.events import Action
from modelyard.config import Settings
from modelyard.db.tables import Webhook, WebhookDelivery
from modelyard.db.types import utcnow
from modelyard.errors import is_dependency_down
from modelyard.polling import poll_forever
from modelyard.webhooks import service
from modelyard.webhooks.outbound import Attempt, Sender
from modelyard.webhooks.schemas import DeliveryStatus
from modelyard.webhooks.signing import sign

log = logging.getLogger(__name__)

BACKOFF = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
MAX_ATTEMPTS = len(BACKOFF) + 1
# Deliveries one process sends at once, and of one account over every process.
CONCURRENCY = 20
ACCOUNT_CONCURRENCY = 4
# Other processes' new deliveries and due retries are found by looking this often; this
# process's own are sent at once (`wake`), and so is the next one when an attempt ends.
POLL_SECONDS = 5.0
# Claims queue on this PostgreSQL advisory lock ("modelhoo"): the per-account count a claim
# reads must not change under it. SQLite's single writer does the same.
CLAIM_LOCK = 0x6D6F64656C686F6F
# Finished deliveries past their retention go this many rows a transaction, this often.
RETENTION_BATCH_ROWS = 1_000
RETENTION_EVERY = timedelta(hours=1)
# A claim outlives the attempt's own time budget by this much.
CLAIM_MARGIN_SECONDS = 60.0
USER_AGENT = f"Modelyard-Webhooks/{__version__}"

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this worker holds until `claimed_until`, and where it goes."""

    id: uuid.UUID
    payload: dict[str, Any]
    attempts: int
    claimed_until: datetime
    url: str
    secret: str
    is_active: bool


class DeliveryWorker:
    """Sends the due deliveries of every process, fairly between accounts; `run_once` is one
    claim and its attempts, `start` keeps claiming in the background."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        sender: Sender,
        *,
        clock: Clock = utcnow,
        concurrency: int = CONCURRENCY,
        account_concurrency: int = ACCOUNT_CONCURRENCY,
        poll_seconds: float = POLL_SECONDS,
        claim_seconds: float | None = None,
        retention: timedelta | None = None,
        retention_batch_rows: int = RETENTION_BATCH_ROWS,
    ) -> None:
        self.sessions = sessions
        self.sender = sender
        self.clock = clock
        self.concurrency = concurrency
        self.account_concurrency = account_concurrency
        self.poll_seconds = poll_seconds
        self.claim = timedelta(
            seconds=claim_seconds
            if claim_seconds is not None
            else sender.timeout_seconds + CLAIM_MARGIN_SECONDS
        )
        self.retention = retention
        self.retention_batch_rows = retention_batch_rows
        self._next_sweep: datetime | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> Self:
        sender = Sender(
            timeout_seconds=settings.webhook_timeout_seconds,
            allow_private_networks=settings.webhook_allow_private_networks,
        )
        days = settings.webhook_delivery_retention_days
        return cls(
            sessions,
            sender,
            concurrency=settings.webhook_concurrency,
            account_concurrency=settings.webhook_account_concurrency,
            retention=timedelta(days=days) if days else None,
        )

    def wake(self) -> None:
        """Look for due deliveries now (new ones were queued)."""
        self._wake.set()

    def start(self) -> None:
        """Send due deliveries in the background until `aclose`."""
        self._task = asyncio.create_task(self._run(), name="webhook-deliveries")

    async def aclose(self) -> None:
        """Stop the background worker. An attempt cut short keeps its claim until it runs out,
        and is then made again (by any process)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._attempts):
            task.cancel()
        await asyncio.gather(*self._attempts, return_exceptions=True)
        await self.sender.aclose()

    async def run_once(self, now: datetime | None = None) -> int:
        """Claim up to `concurrency` deliveries due at `now` (as `start` would), attempt each,
        record the outcomes; return how many were attempted."""
        now = now or self.clock()
        claimed = await self._claim(now, self.concurrency)
        if claimed:
            await asyncio.gather(*(self._deliver(c, now) for c in claimed))
        return len(claimed)

    async def delete_expired(self, now: datetime | None = None) -> int:
        """Delete the finished deliveries whose last attempt is older than `retention`, a
        bounded batch a transaction; return how many went."""
        if self.retention is None:
            return 0
        cutoff = (now or self.clock()) - self.retention
        # A finished row's `next_attempt_at` is its last attempt (`_record`): the index the
        # claims use finds them, and a pending row is never deleted.
        expired = (
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status.in_(
                    [DeliveryStatus.DELIVERED.value, DeliveryStatus.FAILED.value]
                ),
                WebhookDelivery.next_attempt_at < cutoff,
            )
            .limit(self.retention_batch_rows)
        )
        total = 0
        while True:
            async with self.sessions() as db:
                ids = list(await db.scalars(expired))
                if ids:
                    await db.execute(
                        delete(WebhookDelivery)
                        .where(WebhookDelivery.id.in_(ids))
                        .execution_options(synchronize_session=False)
                    )
                    await db.commit()
            total += len(ids)
            if len(ids) < self.retention_batch_rows:
                break
            await asyncio.sleep(0)  # let others write between batches
        if total:
            log.info("webhook_deliveries_expired", extra={"rows": total})
        return total

    async def _run(self) -> None:
        async def step() -> bool:
            now = self.clock()
            if self.retention is not None and (self._next_sweep is None or now >= self._next_sweep):
                self._next_sweep = now + RETENTION_EVERY
                await self.delete_expired(now)
            free = self.concurrency - len(self._attempts)
            if free <= 0:
                return False  # an attempt that ends wakes the loop
            claimed = await self._claim(now, free)
            for c in claimed:
                task = asyncio.create_task(self._attempt(c, now), name=f"webhook-{c.id}")
                self._attempts.add(task)
                task.add_done_callback(self._ended)
            return len(claimed) == free  # every slot taken: more may be due

        await poll_forever(
            step, every=self.poll_seconds, failure="webhook_worker_failed", wake=self._wake
        )

    def _ended(self, task: asyncio.Task[None]) -> None:
        # A slot is free, and the account's count is one lower: claim again.
        self._attempts.discard(task)
        self._wake.set()

    async def _attempt(self, claimed: Claimed, now: datetime) -> None:
        try:
            await self._deliver(claimed, now)
        except Exception as exc:
            # The claim stays until it runs out; the delivery is then attempted again.
            if is_dependency_down(exc):
                log.warning("webhook_attempt_failed", extra={"error": type(exc).__name__})
            else:
                log.exception("webhook_attempt_failed")

    async def _claim(self, now: datetime, limit: int) -> list[Claimed]:
        until = now + self.claim
        due = (
            WebhookDelivery.status == DeliveryStatus.PENDING.value,
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
        )
        # Each account's deliveries in flight now, over every process: unexpired claims.
        busy = (
            select(Webhook.user_id, func.count().label("n"))
            .select_from(WebhookDelivery)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING.value,
                WebhookDelivery.claimed_until >= now,
            )
            .group_by(Webhook.user_id)
            .subquery()
        )
        # Each account's due rows, oldest first, numbered: the round of the turns they get.
        ranked = (
            select(
                WebhookDelivery.id,
                WebhookDelivery.next_attempt_at,
                Webhook.user_id,
                func.row_number()
                .over(
                    partition_by=Webhook.user_id,
                    order_by=(WebhookDelivery.next_attempt_at, WebhookDelivery.id),
                )
                .label("turn"),
            )
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(*due)
            .subquery()
        )
        candidates = (
            select(ranked.c.id)
            .outerjoin(busy, busy.c.user_id == ranked.c.user_id)
            .where(ranked.c.turn + func.coalesce(busy.c.n, 0) <= self.account_concurrency)
            .order_by(ranked.c.turn, ranked.c.next_attempt_at, ranked.c.id)
            .limit(limit)
        )
        async with self.sessions() as db:
            if db.get_bind().dialect.name == "postgresql":
                # Claims queue here, so two never count an account's flights from the same
                # snapshot. SQLite: the UPDATE is the transaction's first statement, so it
                # takes the one write lock before it reads.
                await db.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": CLAIM_LOCK})
            result = await db.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(candidates.scalar_subquery()), *due)
                .values(claimed_until=until)
                .returning(WebhookDelivery.id)
                .execution_options(synchronize_session=False)
            )
            ids = list(result.scalars())
            await db.commit()
            if not ids:
                return []
            rows = await db.execute(
                select(
                    WebhookDelivery.id,
                    WebhookDelivery.payload,
                    WebhookDelivery.attempts,
                    Webhook.url,
                    Webhook.secret,
                    Webhook.is_active,
                )
                .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .where(WebhookDelivery.id.in_(ids))
            )
            return [
                Claimed(
                    id=row.id,
                    payload=row.payload,
                    attempts=row.attempts,
                    claimed_until=until,
                    url=row.url,
                    secret=row.secret,
                    is_active=row.is_active,
                )
                for row in rows
            ]

    async def _deliver(self, claimed: Claimed, now: datetime) -> None:
        if not claimed.is_active:
            attempt = Attempt(None, "the webhook is inactive")
        else:
            body = orjson.dumps(claimed.payload)
            timestamp = int(now.timestamp())
            message_id = str(claimed.id)
            headers = {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": message_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(claimed.secret, message_id, timestamp, body),
            }
            attempt = await self.sender.post(claimed.url, body, headers)
        await self._record(claimed, attempt, now)

    async def _record(self, claimed: Claimed, attempt: Attempt, now: datetime) -> None:
        attempts = claimed.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_attempt_at": now,
            "response_status": attempt.status,
            "last_error": attempt.error,
            "claimed_until": None,
        }
        # A finished row keeps its last attempt in `next_attempt_at`: retention finds it there.
        if attempt.is_delivered:
            values.update(
                status=DeliveryStatus.DELIVERED.value, delivered_at=now, next_attempt_at=now
            )
        elif attempts >= MAX_ATTEMPTS or not claimed.is_active:
            values.update(status=DeliveryStatus.FAILED.value, next_attempt_at=now)
        else:
            values.update(next_attempt_at=now + BACKOFF[attempts - 1])
        async with self.sessions() as db:
            # Only while this worker's claim stands: a claim that ran out belongs to another.
            await db.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == claimed.id,
                    WebhookDelivery.claimed_until == claimed.claimed_until,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            await db.commit()
        log.info(
            "webhook_attempted",
            extra={
                "delivery_id": str(claimed.id),
                "status": attempt.status,
                "delivered": attempt.is_delivered,
                "attempt": attempts,
            },
        )


def feed_from_actions(
    sessions: async_sessionmaker[AsyncSession], worker: DeliveryWorker | None
) -> Callable[[Action], Awaitable[None]]:
    """Return the action sink that queues deliveries of the actions webhooks announce, and
    wakes this process's worker (if it runs one) to send them."""

    async def feed(action: Action) -> None:
        if action.name not in service.EVENT_TYPES:
            return
        async with sessions() as db:
            queued = await service.queue_deliveries(db, action)
        if queued and worker is not None:
            worker.wake()

    return feed
