"""Events for service-level tests: what a service announced and recorded, kept in order."""

from __future__ import annotations

from modelyard.changes.events import Action, Event, Events


class RecordedEvents(Events):
    """The events of one process with no other worker or replica: each announced change and
    each recorded action is kept for the test to read."""

    def __init__(self) -> None:
        super().__init__()
        self.announced: list[Event] = []
        self.actions: list[Action] = []
        self.on_action(self._keep)

    async def _keep(self, action: Action) -> None:
        self.actions.append(action)

    async def deliver(self, event: Event) -> None:
        self.announced.append(event)

    def names(self) -> list[str]:
        """The names of the recorded actions, in order."""
        return [action.name for action in self.actions]
