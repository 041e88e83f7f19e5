"""The delivery worker: takes due deliveries, signs and sends them, records how it went.

Every server process (not a `serving` replica) runs one. Workers of every process and replica
share the `webhook_deliveries` table: a worker takes a due row by setting its `claimed_until`
in one conditional UPDATE (PostgreSQL skips rows another worker has locked; SQLite runs one
writer at a time), so that no delivery is ever sent by two of them at once. A worker that dies
mid-send leaves a claim that runs out after `claim_seconds`; the row is then taken again
(delivery is at least once: receivers deduplicate on `webhook-id`).

A failed attempt (no 2xx: an error status, a redirect, a timeout, a refused address) is
retried after `BACKOFF[n]` (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: about 28 hours in all),
then the delivery is `failed` until someone redelivers it.
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
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelyard import __version__
from modelyard.config import Settings
from modelyard.db.tables import Webhook, WebhookDelivery
from modelyard.db.types import utcnow
from modelyard.events import Action
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
BATCH_SIZE = 20
# Other processes' new deliveries and due retries are found by looking this often; this
# process's own are sent at once (`wake`).
POLL_SECONDS = 5.0
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
    """Sends the due deliveries of every process, a batch at a time; `run_once` is one pass."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        sender: Sender,
        *,
        clock: Clock = utcnow,
        batch_size: int = BATCH_SIZE,
        poll_seconds: float = POLL_SECONDS,
        claim_seconds: float | None = None,
    ) -> None:
        self.sessions = sessions
        self.sender = sender
        self.clock = clock
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.claim = timedelta(
            seconds=claim_seconds
            if claim_seconds is not None
            else sender.timeout_seconds + CLAIM_MARGIN_SECONDS
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> Self:
        sender = Sender(
            timeout_seconds=settings.webhook_timeout_seconds,
            allow_private_networks=settings.webhook_allow_private_networks,
        )
        return cls(sessions, sender)

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
        await self.sender.aclose()

    async def run_once(self, now: datetime | None = None) -> int:
        """Claim up to `batch_size` deliveries due at `now`, attempt each, record the outcomes;
        return how many were attempted."""
        now = now or self.clock()
        claimed = await self._claim(now)
        if claimed:
            await asyncio.gather(*(self._deliver(c, now) for c in claimed))
        return len(claimed)

    async def _run(self) -> None:
        async def step() -> bool:
            return await self.run_once() >= self.batch_size  # a full batch: more may be due

        await poll_forever(
            step, every=self.poll_seconds, failure="webhook_worker_failed", wake=self._wake
        )

    async def _claim(self, now: datetime) -> list[Claimed]:
        until = now + self.claim
        due = (
            WebhookDelivery.status == DeliveryStatus.PENDING.value,
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
        )
        # PostgreSQL: rows another worker is claiming are skipped, not waited for (and two
        # workers never lock the same rows in opposite orders). SQLite has no row locks and
        # ignores FOR UPDATE: its single writer runs one claim at a time. Either way the
        # UPDATE checks again that each row is still unclaimed.
        candidates = (
            select(WebhookDelivery.id)
            .where(*due)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(self.batch_size)
            .with_for_update(skip_locked=True)
        )
        async with self.sessions() as db:
            # The UPDATE is the transaction's first statement: SQLite takes its write lock
            # before it reads, so no two workers claim from the same snapshot.
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
        if attempt.is_delivered:
            values.update(status=DeliveryStatus.DELIVERED.value, delivered_at=now)
        elif attempts >= MAX_ATTEMPTS or not claimed.is_active:
            values.update(status=DeliveryStatus.FAILED.value)
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
