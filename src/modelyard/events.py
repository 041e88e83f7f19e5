"""What changed, announced by the services after they commit.

Services take an `Events` as a keyword (`events=`) and announce a change once it is committed:
a credential revoked, a user's rights changed, a version promoted. What listens is behind this
interface: today the host's shared epochs (every worker on the host drops what its caches
remembered), later audit, webhooks and other replicas (TODO(#12): Redis).
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from modelyard.epochs import Epoch, Epochs


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


class Events(ABC):
    """Announce committed changes to whatever must follow them."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` with every event announced from now on, in this process."""
        self._listeners.append(listener)

    def credentials_changed(
        self, *, user_id: uuid.UUID | None = None, api_key_id: uuid.UUID | None = None
    ) -> None:
        """Announce that credentials issued before now may no longer hold (revocation, logout,
        password change, deactivation, promotion or demotion)."""
        self.publish(Event(EventKind.CREDENTIALS, user_id=user_id, api_key_id=api_key_id))

    def registry_changed(self, *, model_id: uuid.UUID | None = None) -> None:
        """Announce that what a model name, alias or stage resolves to may have changed."""
        self.publish(Event(EventKind.REGISTRY, model_id=model_id))

    def publish(self, event: Event) -> None:
        """Deliver `event` where it must go, then to this process's listeners."""
        self.deliver(event)
        for listener in self._listeners:
            listener(event)

    @abstractmethod
    def deliver(self, event: Event) -> None:
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

    def deliver(self, event: Event) -> None:
        self.epochs.bump(self.EPOCHS[event.kind])
