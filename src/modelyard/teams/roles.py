"""The roles of a team's members, from the least to the most trusted, and what each may do.

Each role may do what the roles below it may: `viewer` reads and predicts; `editor` also uploads
versions, moves unprotected aliases, runs experiments, files and batch jobs; `maintainer` also
moves stages and protected aliases, sets traffic policies and webhooks, makes team API keys and
archives; `owner` also manages the members and the team itself.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    EDITOR = "editor"
    MAINTAINER = "maintainer"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        """Tell whether a member with this role may do what `needed` may."""
        return self.rank >= needed.rank


_RANK = {role: rank for rank, role in enumerate(Role)}
