"""Routes of `/api/v1/teams`: teams, their members and invitations."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Path, status

from modelyard.auth.deps import CurrentUser
from modelyard.changes.deps import EventsDep
from modelyard.db.deps import SessionDep
from modelyard.db.tables import Team, TeamInvitation, TeamMember, User
from modelyard.edge.routing import make_router
from modelyard.teams import service
from modelyard.teams.roles import Role
from modelyard.teams.schemas import (
    InvitationAccept,
    InvitationCreate,
    InvitationCreated,
    InvitationRead,
    MemberAdd,
    MemberRead,
    MemberUpdate,
    TeamCreate,
    TeamRead,
    TeamUpdate,
)

router = make_router(prefix="/api/v1/teams", tags=["teams"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such team among the caller's"}
}
ROLE: dict[int | str, dict[str, Any]] = {
    403: {"description": "the caller's role in the team is not enough"}
}
SlugParam = Annotated[str, Path(min_length=1, max_length=64, description="The team's slug")]


async def team_membership(slug: SlugParam, user: CurrentUser, db: SessionDep) -> service.Membership:
    """Return the team `{slug}` as the caller sees it (404 unless a member or an admin)."""
    return await service.get_team(db, user, slug)


TeamDep = Annotated[service.Membership, Depends(team_membership)]


def _read(membership: service.Membership, members: int) -> TeamRead:
    read = TeamRead.model_validate(membership.team)
    return read.model_copy(update={"role": membership.role, "member_count": members})


async def _read_one(db: SessionDep, membership: service.Membership) -> TeamRead:
    counts = await service.member_counts(db, [membership.team.id])
    return _read(membership, counts.get(membership.team.id, 0))


def _member(row: tuple[TeamMember, User]) -> MemberRead:
    member, user = row
    return MemberRead(
        user_id=user.id,
        email=user.email,
        full_name=user.full_name,
        role=Role(member.role),
        created_at=member.created_at,
    )


def _invitation(invitation: TeamInvitation, team: Team) -> InvitationRead:
    return InvitationRead(
        id=invitation.id,
        team_slug=team.slug,
        email=invitation.email,
        role=Role(invitation.role),
        created_at=invitation.created_at,
        expires_at=invitation.expires_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TeamRead,
    responses={409: {"description": "the slug is taken"}},
)
async def create_team(
    body: TeamCreate, user: CurrentUser, db: SessionDep, events: EventsDep
) -> TeamRead:
    """Create a team; the caller becomes its owner."""
    membership = await service.create_team(db, user, body, events=events)
    return _read(membership, 1)


@router.get("", response_model=list[TeamRead])
async def list_teams(user: CurrentUser, db: SessionDep) -> list[TeamRead]:
    """List the teams the caller is a member of, with the caller's role in each."""
    memberships = await service.list_teams(db, user)
    counts = await service.member_counts(db, [m.team.id for m in memberships])
    return [_read(m, counts.get(m.team.id, 0)) for m in memberships]


@router.post(
    "/invitations/accept",
    response_model=TeamRead,
    responses={
        404: {"description": "no pending invitation with that token for the caller's email"},
        409: {"description": "the caller is a member already"},
    },
)
async def accept_invitation(
    body: InvitationAccept, user: CurrentUser, db: SessionDep, events: EventsDep
) -> TeamRead:
    """Join a team with the token of an invitation sent to the caller's email."""
    membership = await service.accept_invitation(db, user, body.token, events=events)
    return await _read_one(db, membership)


@router.get("/{slug}", response_model=TeamRead, responses=NOT_FOUND)
async def get_team(team: TeamDep, db: SessionDep) -> TeamRead:
    """Show a team and the caller's role in it."""
    return await _read_one(db, team)


@router.patch("/{slug}", response_model=TeamRead, responses={**NOT_FOUND, **ROLE})
async def update_team(
    body: TeamUpdate, team: TeamDep, db: SessionDep, events: EventsDep
) -> TeamRead:
    """Change a team's name or description (maintainer), or its protected stages and aliases
    and whether promotions need an approval (owner)."""
    await service.update_team(db, team, body, events=events)
    return await _read_one(db, team)


@router.delete("/{slug}", status_code=status.HTTP_204_NO_CONTENT, responses={**NOT_FOUND, **ROLE})
async def delete_team(team: TeamDep, db: SessionDep, events: EventsDep) -> None:
    """Delete a team, its memberships and invitations (owner)."""
    await service.delete_team(db, team, events=events)


@router.get("/{slug}/members", response_model=list[MemberRead], responses=NOT_FOUND)
async def list_members(team: TeamDep, db: SessionDep) -> list[MemberRead]:
    """List a team's members with their roles, owners first."""
    return [_member(row) for row in await service.list_members(db, team)]


@router.post(
    "/{slug}/members",
    status_code=status.HTTP_201_CREATED,
    response_model=MemberRead,
    responses={
        **ROLE,
        404: {"description": "no such team, or no user with that email (invite it instead)"},
        409: {"description": "a member already, or the team is full"},
    },
)
async def add_member(
    body: MemberAdd, team: TeamDep, db: SessionDep, events: EventsDep
) -> MemberRead:
    """Add an existing user to the team with a role (owner)."""
    return _member(await service.add_member(db, team, body, events=events))


@router.patch(
    "/{slug}/members/{user_id}",
    response_model=MemberRead,
    responses={**NOT_FOUND, **ROLE, 409: {"description": "the team would have no owner"}},
)
async def change_role(
    user_id: uuid.UUID, body: MemberUpdate, team: TeamDep, db: SessionDep, events: EventsDep
) -> MemberRead:
    """Give a member another role (owner)."""
    row = await service.change_role(db, team, user_id, body.role, events=events)
    return _member(row)


@router.delete(
    "/{slug}/members/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **ROLE, 409: {"description": "the team would have no owner"}},
)
async def remove_member(
    user_id: uuid.UUID, team: TeamDep, user: CurrentUser, db: SessionDep, events: EventsDep
) -> None:
    """Remove a member (owner), or leave the team (any member, with their own id)."""
    await service.remove_member(db, team, user, user_id, events=events)


@router.post(
    "/{slug}/invitations",
    status_code=status.HTTP_201_CREATED,
    response_model=InvitationCreated,
    responses={**NOT_FOUND, **ROLE},
)
async def invite(
    body: InvitationCreate, team: TeamDep, db: SessionDep, events: EventsDep
) -> InvitationCreated:
    """Invite an email to the team (owner). The answer holds the invitation's token, once:
    give it to the invitee, who accepts it signed in with that email."""
    invitation, token = await service.invite(db, team, body, events=events)
    read = _invitation(invitation, team.team)
    return InvitationCreated(**read.model_dump(), token=token)


@router.get(
    "/{slug}/invitations", response_model=list[InvitationRead], responses={**NOT_FOUND, **ROLE}
)
async def list_invitations(team: TeamDep, db: SessionDep) -> list[InvitationRead]:
    """List the team's pending invitations (owner)."""
    return [_invitation(i, team.team) for i in await service.list_invitations(db, team)]


@router.delete(
    "/{slug}/invitations/{invitation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **ROLE},
)
async def revoke_invitation(invitation_id: uuid.UUID, team: TeamDep, db: SessionDep) -> None:
    """Withdraw a pending invitation (owner)."""
    await service.revoke_invitation(db, team, invitation_id)
