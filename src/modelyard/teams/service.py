"""Use cases of teams: create, read, change and delete a team; its members and invitations.

Who may see a team is its members (and admins); anyone else gets 404, as for any object of
another account. What a member may do is their role (`roles.Role`): the checks are here, once,
as `require(...)`. A change of membership announces a credentials change for that user, so that
every worker and replica resolves the user's rights afresh on the next request.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.auth.service import normalise_email
from modelyard.changes.events import Action, Events
from modelyard.db import sql
from modelyard.db.tables import Team, TeamInvitation, TeamMember, User
from modelyard.db.types import utcnow
from modelyard.errors import Conflict, Forbidden, NotFound
from modelyard.teams.roles import Role
from modelyard.teams.schemas import InvitationCreate, MemberAdd, TeamCreate, TeamUpdate

DEFAULT_PROTECTED_STAGES = ("production",)
INVITATION_LIFETIME = timedelta(days=7)
INVITATION_PREFIX = "myt_"
MAX_TEAMS_PER_USER = 100
MAX_MEMBERS = 1_000


class TeamNotFound(NotFound):
    def __init__(self, slug: str) -> None:
        super().__init__(f"team '{slug}' not found")


class RoleRequired(Forbidden):
    type = "team-role-required"

    def __init__(self, needed: Role) -> None:
        super().__init__(f"this needs the team's {needed} role or above")


@dataclass(frozen=True, slots=True)
class Membership:
    """A team as one caller sees it: the team, and the caller's role (None: an admin who is not
    a member, who may do what an owner may)."""

    team: Team
    role: Role | None

    def require(self, needed: Role) -> None:
        """Raises RoleRequired unless the caller may do what `needed` may."""
        if self.role is not None and not self.role.allows(needed):
            raise RoleRequired(needed)


# --- teams --------------------------------------------------------------------------------------


async def create_team(
    db: AsyncSession, user: User, data: TeamCreate, *, events: Events
) -> Membership:
    """Create a team with `user` as its owner.

    Raises:
        Conflict: the slug is taken, or the user is in too many teams.
    """
    if await _count(db, TeamMember.user_id == user.id) >= MAX_TEAMS_PER_USER:
        raise Conflict(f"a user can be in at most {MAX_TEAMS_PER_USER} teams")
    team = Team(
        slug=data.slug,
        name=data.name,
        description=data.description,
        created_by=user.id,
        require_approval=False,
        protected_stages=list(DEFAULT_PROTECTED_STAGES),
        protected_aliases=[],
    )
    db.add(team)
    try:
        await db.flush()
    except IntegrityError as exc:
        await db.rollback()
        raise Conflict(f"the team name '{data.slug}' is taken") from exc
    db.add(TeamMember(team_id=team.id, user_id=user.id, role=Role.OWNER))
    await db.commit()
    await events.credentials_changed(user_id=user.id)
    await events.record(_action("team.created", team, {"slug": team.slug, "name": team.name}))
    return Membership(team, Role.OWNER)


async def list_teams(db: AsyncSession, user: User) -> list[Membership]:
    """Return the teams `user` is a member of, by slug."""
    rows = await db.execute(
        select(Team, TeamMember.role)
        .join(TeamMember, TeamMember.team_id == Team.id)
        .where(TeamMember.user_id == user.id)
        .order_by(Team.slug)
    )
    return [Membership(team, Role(role)) for team, role in rows]


async def get_team(db: AsyncSession, user: User, slug: str) -> Membership:
    """Return the team `slug` as `user` sees it.

    Raises:
        TeamNotFound: no such team, or the user is neither a member nor an admin.
    """
    row = (
        await db.execute(
            select(Team, TeamMember.role)
            .outerjoin(
                TeamMember, (TeamMember.team_id == Team.id) & (TeamMember.user_id == user.id)
            )
            .where(Team.slug == slug)
        )
    ).first()
    if row is None or (row[1] is None and not user.is_admin):
        raise TeamNotFound(slug)
    team, role = row
    return Membership(team, None if role is None else Role(role))


async def member_counts(db: AsyncSession, team_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Count the members of each team in one query."""
    if not team_ids:
        return {}
    rows = await db.execute(
        select(TeamMember.team_id, func.count())
        .where(TeamMember.team_id.in_(team_ids))
        .group_by(TeamMember.team_id)
    )
    return {team_id: int(count) for team_id, count in rows}


async def update_team(
    db: AsyncSession, membership: Membership, data: TeamUpdate, *, events: Events
) -> Team:
    """Change a team's name or description (a maintainer) or its protections (the owner).

    Raises:
        RoleRequired: the caller's role is not enough for a field it changes.
    """
    changes = data.model_dump(exclude_unset=True)
    protections = {"require_approval", "protected_stages", "protected_aliases"}
    membership.require(Role.OWNER if protections & changes.keys() else Role.MAINTAINER)
    team = membership.team
    for key, value in changes.items():
        if key == "name" and value is None:
            continue
        if key in protections and value is None:
            continue
        setattr(team, key, sorted(set(value)) if isinstance(value, list) else value)
    await db.commit()
    await events.record(_action("team.updated", team, changes))
    return team


async def delete_team(db: AsyncSession, membership: Membership, *, events: Events) -> None:
    """Delete a team and its memberships and invitations (its owner).

    Raises:
        RoleRequired: the caller is not the team's owner.
    """
    membership.require(Role.OWNER)
    team = membership.team
    members = list(
        await db.scalars(select(TeamMember.user_id).where(TeamMember.team_id == team.id))
    )
    await db.delete(team)
    await db.commit()
    for user_id in members:
        await events.credentials_changed(user_id=user_id)
    await events.record(_action("team.deleted", team, {"slug": team.slug}))


# --- members ------------------------------------------------------------------------------------


async def list_members(db: AsyncSession, membership: Membership) -> list[tuple[TeamMember, User]]:
    """Return the members of a team with their accounts, owners first, then by email."""
    rows = await db.execute(
        select(TeamMember, User)
        .join(User, User.id == TeamMember.user_id)
        .where(TeamMember.team_id == membership.team.id)
    )
    members = [(member, user) for member, user in rows]
    members.sort(key=lambda row: (-Role(row[0].role).rank, row[1].email))
    return members


async def add_member(
    db: AsyncSession, membership: Membership, data: MemberAdd, *, events: Events
) -> tuple[TeamMember, User]:
    """Add an existing user to a team (its owner).

    Raises:
        RoleRequired: the caller is not the team's owner.
        NotFound: no active user has that email (invite it instead).
        Conflict: the user is a member already, or the team is full.
    """
    membership.require(Role.OWNER)
    team = membership.team
    user = await db.scalar(
        select(User).where(User.email == normalise_email(data.email), User.is_active.is_(True))
    )
    if user is None:
        raise NotFound("no user has that email: invite it instead (POST .../invitations)")
    await _check_room(db, team)
    member = TeamMember(team_id=team.id, user_id=user.id, role=data.role)
    db.add(member)
    already = f"{user.email} is a member of '{team.slug}' already"  # a rollback expires rows
    try:
        await db.commit()
    except IntegrityError as exc:
        await db.rollback()
        raise Conflict(already) from exc
    await events.credentials_changed(user_id=user.id)
    await events.record(
        _action("team.member_added", team, {"user_id": str(user.id), "role": str(data.role)})
    )
    return member, user


async def change_role(
    db: AsyncSession, membership: Membership, user_id: uuid.UUID, role: Role, *, events: Events
) -> tuple[TeamMember, User]:
    """Give a member another role (the team's owner); a team keeps at least one owner.

    Raises:
        RoleRequired: the caller is not the team's owner.
        NotFound: the user is not a member.
        Conflict: it would leave the team without an owner.
    """
    membership.require(Role.OWNER)
    member, user = await _member(db, membership.team, user_id)
    if member.role == Role.OWNER and role != Role.OWNER:
        await _keep_an_owner(db, membership.team)
    before = member.role
    member.role = role
    await db.commit()
    await events.credentials_changed(user_id=user_id)
    await events.record(
        _action(
            "team.member_role_changed",
            membership.team,
            {"user_id": str(user_id), "from": before, "to": str(role)},
        )
    )
    return member, user


async def remove_member(
    db: AsyncSession, membership: Membership, caller: User, user_id: uuid.UUID, *, events: Events
) -> None:
    """Remove a member (the team's owner), or leave a team (any member, for themselves); a
    team keeps at least one owner.

    Raises:
        RoleRequired: the caller removes someone else and is not the team's owner.
        NotFound: the user is not a member.
        Conflict: it would leave the team without an owner.
    """
    if user_id != caller.id:
        membership.require(Role.OWNER)
    member, _ = await _member(db, membership.team, user_id)
    if member.role == Role.OWNER:
        await _keep_an_owner(db, membership.team)
    await db.delete(member)
    await db.commit()
    await events.credentials_changed(user_id=user_id)
    await events.record(_action("team.member_removed", membership.team, {"user_id": str(user_id)}))


async def _member(db: AsyncSession, team: Team, user_id: uuid.UUID) -> tuple[TeamMember, User]:
    row = (
        await db.execute(
            select(TeamMember, User)
            .join(User, User.id == TeamMember.user_id)
            .where(TeamMember.team_id == team.id, TeamMember.user_id == user_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"user '{user_id}' is not a member of '{team.slug}'")
    member, user = row
    return member, user


async def _keep_an_owner(db: AsyncSession, team: Team) -> None:
    # Locks the team's owner rows on PostgreSQL, so that two owners demoting each other at
    # once cannot both pass; SQLite serialises writers anyway.
    owners = list(
        await db.scalars(
            select(TeamMember.user_id)
            .where(TeamMember.team_id == team.id, TeamMember.role == Role.OWNER)
            .with_for_update()
        )
    )
    if len(owners) <= 1:
        raise Conflict(f"'{team.slug}' needs another owner first: a team keeps at least one")


async def _check_room(db: AsyncSession, team: Team) -> None:
    if await _count(db, TeamMember.team_id == team.id) >= MAX_MEMBERS:
        raise Conflict(f"a team has at most {MAX_MEMBERS} members")


async def _count(db: AsyncSession, where: ColumnElement[bool]) -> int:
    count = await db.scalar(select(func.count()).select_from(TeamMember).where(where))
    return int(count or 0)


# --- invitations --------------------------------------------------------------------------------


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def invite(
    db: AsyncSession, membership: Membership, data: InvitationCreate, *, events: Events
) -> tuple[TeamInvitation, str]:
    """Invite an email to a team (its owner); return the invitation and its secret, which is
    not stored and cannot be shown again. A new invitation of the same email replaces the last.

    Raises:
        RoleRequired: the caller is not the team's owner.
        Conflict: the team is full.
    """
    membership.require(Role.OWNER)
    team = membership.team
    await _check_room(db, team)
    email = normalise_email(data.email)
    token = INVITATION_PREFIX + secrets.token_urlsafe(32)
    await db.execute(
        delete(TeamInvitation).where(
            TeamInvitation.team_id == team.id, TeamInvitation.email == email
        )
    )
    now = utcnow()
    invitation = TeamInvitation(
        team_id=team.id,
        email=email,
        role=data.role,
        token_hash=_hash(token),
        created_at=now,
        expires_at=now + INVITATION_LIFETIME,
    )
    db.add(invitation)
    await db.commit()
    await events.record(
        _action(
            "team.member_invited",
            team,
            {"invitation_id": str(invitation.id), "role": str(data.role)},
        )
    )
    return invitation, token


async def list_invitations(db: AsyncSession, membership: Membership) -> list[TeamInvitation]:
    """Return a team's pending invitations (its owner), newest first."""
    membership.require(Role.OWNER)
    found = await db.scalars(
        select(TeamInvitation)
        .where(TeamInvitation.team_id == membership.team.id, TeamInvitation.expires_at > utcnow())
        .order_by(TeamInvitation.created_at.desc())
    )
    return list(found)


async def revoke_invitation(
    db: AsyncSession, membership: Membership, invitation_id: uuid.UUID
) -> None:
    """Withdraw a pending invitation (the team's owner).

    Raises:
        NotFound: the team has no such invitation.
    """
    membership.require(Role.OWNER)
    done = await db.execute(
        delete(TeamInvitation).where(
            TeamInvitation.id == invitation_id, TeamInvitation.team_id == membership.team.id
        )
    )
    await db.commit()
    if not sql.rowcount(done):
        raise NotFound(f"invitation '{invitation_id}' not found")


async def accept_invitation(
    db: AsyncSession, user: User, token: str, *, events: Events
) -> Membership:
    """Join the team an invitation of `user`'s email is for, with its role; the invitation is
    spent. An invitation of another email, an expired or an unknown one are all 404 alike.

    Raises:
        NotFound: no pending invitation with that secret for this user's email.
        Conflict: the user is a member already (the invitation is spent anyway).
    """
    invitation = await db.scalar(
        select(TeamInvitation).where(TeamInvitation.token_hash == _hash(token))
    )
    if (
        invitation is None
        or invitation.email != normalise_email(user.email)
        or invitation.expires_at <= utcnow()
    ):
        raise NotFound("no pending invitation with that token for your email")
    team = await db.get(Team, invitation.team_id)
    if team is None:  # deleted since the invitation was read (it cascades with its team)
        raise NotFound("no pending invitation with that token for your email")
    role = Role(invitation.role)
    invitation_id, already = invitation.id, f"you are a member of '{team.slug}' already"
    await db.delete(invitation)
    db.add(TeamMember(team_id=team.id, user_id=user.id, role=role))
    try:
        await db.commit()
    except IntegrityError as exc:
        await db.rollback()
        await db.execute(delete(TeamInvitation).where(TeamInvitation.id == invitation_id))
        await db.commit()
        raise Conflict(already) from exc
    await events.credentials_changed(user_id=user.id)
    await events.record(
        _action("team.member_joined", team, {"user_id": str(user.id), "role": str(role)})
    )
    return Membership(team, role)


async def before_user_erased(db: AsyncSession, user_id: uuid.UUID) -> None:
    """Prepare the erasure of a user (not committed): the teams the user is alone in are
    deleted; their memberships elsewhere go with the user row.

    Raises:
        Conflict: the user is the last owner of a team that has other members (who would be
            left with nobody to manage it): they name another owner first.
    """
    mine = (
        select(TeamMember.team_id)
        .where(TeamMember.user_id == user_id, TeamMember.role == Role.OWNER)
        .scalar_subquery()
    )
    rows = await db.execute(
        select(Team.id, Team.slug, TeamMember.user_id, TeamMember.role)
        .join(TeamMember, TeamMember.team_id == Team.id)
        .where(Team.id.in_(mine))
    )
    teams: dict[uuid.UUID, tuple[str, list[tuple[uuid.UUID, str]]]] = {}
    for team_id, slug, member_id, role in rows:
        teams.setdefault(team_id, (slug, []))[1].append((member_id, role))
    alone = []
    for team_id, (slug, members) in teams.items():
        if len(members) == 1:
            alone.append(team_id)
        elif sum(role == Role.OWNER for _, role in members) == 1:
            raise Conflict(
                f"the account is the last owner of team '{slug}': name another owner first"
            )
    if alone:
        await db.execute(delete(Team).where(Team.id.in_(alone)))


def _action(name: str, team: Team, details: dict[str, object]) -> Action:
    return Action(name=name, target_type="team", target_id=str(team.id), details=details)
