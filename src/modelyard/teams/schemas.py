"""API types of teams, their members and invitations."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import EmailStr, Field, StringConstraints

from modelyard.schemas import ReadModel, StrictModel
from modelyard.teams.roles import Role

TeamSlug = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"),
    Field(
        description="The team's handle in URLs: 1-64 lowercase letters, digits and '-', "
        "starting and ending with a letter or digit"
    ),
]
TeamName = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
# A stage a version can be moved to (the registry's stages but the first, `development`; a test
# keeps the two lists equal) and an alias name (the registry's rule): teams sit below the registry.
StageName = Annotated[str, StringConstraints(pattern=r"^(staging|production|deprecated|archived)$")]
AliasName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]


class TeamCreate(StrictModel):
    slug: TeamSlug
    name: TeamName
    description: Annotated[str | None, Field(max_length=5_000)] = None


class TeamUpdate(StrictModel):
    """What to change; fields left out stay. Protection settings need the team's owner."""

    name: TeamName | None = None
    description: Annotated[str | None, Field(max_length=5_000)] = None
    require_approval: bool | None = None
    protected_stages: Annotated[list[StageName] | None, Field(max_length=4)] = None
    protected_aliases: Annotated[list[AliasName] | None, Field(max_length=50)] = None


class TeamRead(ReadModel):
    id: uuid.UUID
    slug: str
    name: str
    description: str | None
    require_approval: bool
    protected_stages: list[str]
    protected_aliases: list[str]
    created_at: datetime
    # The caller's role in the team (None: an admin who is not a member).
    role: Role | None = None
    member_count: int = 0


class MemberAdd(StrictModel):
    email: Annotated[str, Field(max_length=320, description="An existing user's email")]
    role: Role = Role.VIEWER


class MemberUpdate(StrictModel):
    role: Role


class MemberRead(ReadModel):
    user_id: uuid.UUID
    email: str
    full_name: str | None
    role: Role
    created_at: datetime


class InvitationCreate(StrictModel):
    email: EmailStr
    role: Role = Role.VIEWER


class InvitationRead(ReadModel):
    id: uuid.UUID
    team_slug: str
    email: str
    role: Role
    created_at: datetime
    expires_at: datetime


class InvitationCreated(InvitationRead):
    token: str = Field(description="Shown once: who accepts the invitation presents it")


class InvitationAccept(StrictModel):
    token: Annotated[str, Field(min_length=1, max_length=200)]
