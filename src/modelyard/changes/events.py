"""What changed, announced by the services after they commit.

Services take an `Events` as a keyword (`events=`) and announce a change once it is committed:
a credential revoked, a user's rights changed, a version promoted. What listens is behind this
interface: the host's shared epochs (every worker on the host drops what its caches remembered),
other replicas through Redis, and whatever subscribes in this process.

Services also record what someone did (`record(Action(...))`): a sign-in, an upload, a key
revoked. Actions go to the sinks of this process (the audit log, webhooks), each once: the
replica that did the thing records it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from modelyard.changes.epochs import Epoch, Epochs

log = logging.getLogger(__name__)


class EventKind(StrEnum):
    CREDENTIALS = "credentials"  # a key revoked, a session ended, a user's rights or secret changed
    REGISTRY = "registry"  # a version uploaded, promoted, archived; an alias moved


@dataclass(frozen=True, slots=True)
class Event:
    """One committed change, and what it touched (None: not about one such object)."""

    kind: EventKind
    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    model_id: uuid.UUID | None = None


Listener = Callable[[Event], None]


@dataclass(frozen=True, slots=True)
class Action:
    """Something someone did, once committed (or a refused attempt, such as a failed sign-in):
    what the audit log records and webhooks announce.

    `name` is `<target type>.<verb>` (`model_version.created`, `api_key.revoked`,
    `auth.login_failed`). Who did it is the request's caller (`modelyard.edge.context`) unless
    `actor_user_id` says otherwise (a sign-in, before there is a caller). `details` describe the
    change for people and receivers; never a secret.
    """

    name: str
    target_type: str
    target_id: str | None = None
    # The account whose things these are (a user sees the actions on their account and models)
    # and the model concerned, if any.
    owner_id: uuid.UUID | None = None
    model_id: uuid.UUID | None = None
    actor_user_id: uuid.UUID | None = None
    outcome: str = "success"  # or "failure"
    details: Mapping[str, Any] = field(default_factory=dict)


ActionSink = Callable[[Action], Awaitable[None]]


class Events(ABC):
    """Announce committed changes to whatever must follow them."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._sinks: list[ActionSink] = []

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` with every event announced from now on by this process."""
        self._listeners.append(listener)

    def on_action(self, sink: ActionSink) -> None:
        """Await `sink` with every action recorded from now on by this process."""
        self._sinks.append(sink)

    async def record(self, action: Action) -> None:
        """Hand `action` to every sink, in order. The change is committed already: a sink that
        fails is logged, and neither undoes it nor keeps the others from their turn."""
        for sink in self._sinks:
            try:
                await sink(action)
            except Exception:
                log.exception("action_sink_failed", extra={"action": action.name})

    async def credentials_changed(
        self, *, user_id: uuid.UUID | None = None, api_key_id: uuid.UUID | None = None
    ) -> None:
        """Announce that credentials issued before now may no longer hold (revocation, logout,
        password change, deactivation, promotion or demotion): every worker and replica drops
        the callers it remembered and checks its open event streams again (`audit.live`)."""
        await self.publish(Event(EventKind.CREDENTIALS, user_id=user_id, api_key_id=api_key_id))

    async def registry_changed(self, *, model_id: uuid.UUID | None = None) -> None:
        """Announce that what a model name, alias or stage resolves to may have changed."""
        await self.publish(Event(EventKind.REGISTRY, model_id=model_id))

    async def publish(self, event: Event) -> None:
        """Deliver `event` where it must go, then to this process's listeners."""
        await self.deliver(event)
        for listener in self._listeners:
            listener(event)

    @abstractmethod
    async def deliver(self, event: Event) -> None:
        """Make every cache that may hold what `event` changed forget it."""


class LocalEvents(Events):
    """Events for the workers of one host: each bumps a counter in the shared epochs file."""

    EPOCHS: ClassVar[dict[EventKind, Epoch]] = {
        EventKind.CREDENTIALS: Epoch.AUTH,
        EventKind.REGISTRY: Epoch.REGISTRY,
    }

    def __init__(self, epochs: Epochs) -> None:
        super().__init__()
        self.epochs = epochs

    async def deliver(self, event: Event) -> None:
        self.epochs.bump(self.EPOCHS[event.kind])

    def forget_everything(self) -> None:
        """Bump every epoch: whatever any worker of the host remembered is stale."""
        for epoch in Epoch:
            self.epochs.bump(epoch)

    def start(self) -> None:
        """Start whatever runs in the background (nothing, on one host)."""

    async def aclose(self) -> None:
        """Stop whatever runs in the background (nothing, on one host)."""
        return None


def make_events(
    epochs: Epochs, redis: Redis | None, *, on_health: Callable[[bool], None] | None = None
) -> LocalEvents:
    """Return the host's events, carried to every replica when Redis is configured."""
    if redis is None:
        return LocalEvents(epochs)
    return RedisEvents(epochs, redis, on_health=on_health)


# Redis has answered nothing for this long: the replica counts itself cut off.
REDIS_TIMEOUT_SECONDS = 0.5
# How often each worker compares its last seen event number with Redis's (missed messages).
CATCH_UP_SECONDS = 0.5
RECONNECT_SECONDS = 1.0


class RedisEvents(LocalEvents):
    """Events for replicas on several hosts: the host's epochs, and a Redis channel.

    Each event is numbered (`INCR`) and published; every worker of every replica listens and
    bumps its host's epochs. A worker also compares the last number it saw with Redis's twice a
    second, so a message lost to a reconnect costs at most that. When Redis cannot be reached
    the replica forgets everything once and calls `on_health(False)` (the caches then keep
    answers for short lifetimes only); when Redis answers again it forgets everything once more
    (what it missed) and calls `on_health(True)`.
    """

    def __init__(
        self,
        epochs: Epochs,
        redis: Redis,
        *,
        on_health: Callable[[bool], None] | None = None,
        catch_up_seconds: float = CATCH_UP_SECONDS,
        namespace: str = "modelyard",
    ) -> None:
        super().__init__(epochs)
        self.redis = redis
        self.channel = f"{namespace}:events"
        self.sequence = f"{namespace}:events:seq"
        self.on_health = on_health or (lambda healthy: None)
        self.catch_up_seconds = catch_up_seconds
        self.origin = uuid.uuid4().hex  # this process: its own messages need no second bump
        self.healthy = True
        self._seen = 0
        self._unsent = False  # an event could not be published: announce a catch-up later
        self._tasks: list[asyncio.Task[None]] = []
        # Set by aclose: the loops end by themselves even when a cancellation is lost (Python
        # 3.11's wait_for can swallow one that races its own timeout; the loop then went on).
        self._closing = False

    async def deliver(self, event: Event) -> None:
        await super().deliver(event)
        try:
            await asyncio.wait_for(self._send(event), REDIS_TIMEOUT_SECONDS)
        except (RedisError, OSError, TimeoutError) as exc:
            # Committed all the same; other replicas learn it when Redis is back (catch-up).
            self._unsent = True
            log.warning("event_not_published", extra={"error": type(exc).__name__})

    async def _send(self, event: Event | None) -> None:
        seq = int(await self.redis.incr(self.sequence))
        message: dict[str, Any] = {"seq": seq, "origin": self.origin}
        if event is not None:
            message["kind"] = event.kind.value
        await self.redis.publish(self.channel, orjson.dumps(message))

    def start(self) -> None:
        """Listen for other replicas' events and watch for missed ones, in the background."""
        self._tasks = [
            asyncio.create_task(self._listen(), name="events-listen"),
            asyncio.create_task(self._watch(), name="events-watch"),
        ]

    async def aclose(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _listen(self) -> None:
        while not self._closing:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    async for message in pubsub.listen():
                        self._received(message.get("data"))
            except (RedisError, OSError) as exc:
                log.info("events_listen_reconnect", extra={"error": type(exc).__name__})
                await asyncio.sleep(RECONNECT_SECONDS)

    def _received(self, data: Any) -> None:
        try:
            message = orjson.loads(data)
            seq = int(message["seq"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        if message.get("origin") != self.origin:
            kind = message.get("kind")
            if kind in EventKind.__members__.values():
                self.epochs.bump(self.EPOCHS[EventKind(kind)])
            else:  # a catch-up: someone missed or could not send events
                self.forget_everything()
        self._seen = max(self._seen, seq)

    async def _watch(self) -> None:
        while not self._closing:
            try:
                current = await asyncio.wait_for(
                    self.redis.get(self.sequence), REDIS_TIMEOUT_SECONDS
                )
                if self._unsent:
                    self._unsent = False
                    await asyncio.wait_for(self._send(None), REDIS_TIMEOUT_SECONDS)
            except (RedisError, OSError, TimeoutError) as exc:
                self._set_health(False, type(exc).__name__)
            else:
                seq = int(current or 0)
                if not self.healthy or seq > self._seen:
                    # Back from an outage, or a message never arrived: what was missed is
                    # unknown, so everything is.
                    self.forget_everything()
                self._seen = max(self._seen, seq)
                self._set_health(True)
            await asyncio.sleep(self.catch_up_seconds)

    def _set_health(self, healthy: bool, error: str | None = None) -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        if not healthy:
            log.warning("events_degraded", extra={"error": error})
            self.forget_everything()
        else:
            log.info("events_restored")
        self.on_health(healthy)
