"""`modelyard teams ...`: teams, their members, roles and invitations."""

from __future__ import annotations

from typing import Annotated

import typer

from modelyard_client.cli.commands import JsonFlag, _client
from modelyard_client.cli.output import print_json, print_record, print_table, say

teams = typer.Typer(help="Teams: members with roles, and invitations.", no_args_is_help=True)
TEAM_COLUMNS = ("slug", "name", "role", "member_count", "require_approval", "protected_stages")
ROLES = ("viewer", "editor", "maintainer", "owner")
RoleOpt = Annotated[str, typer.Option(help="viewer (read, predict), editor, maintainer or owner.")]


def _role(value: str) -> str:
    if value not in ROLES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(ROLES)}", param_hint="--role")
    return value


@teams.command("list")
def teams_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List your teams and your role in each."""
    with _client(ctx) as client:
        found = client.list_teams()
    print_json(found) if as_json else print_table(found, TEAM_COLUMNS)


@teams.command("create")
def teams_create(
    ctx: typer.Context,
    slug: Annotated[str, typer.Argument(help="Lowercase letters, digits and -, e.g. vision.")],
    name: Annotated[str | None, typer.Option(help="Display name (default: the slug).")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a team; you are its owner."""
    with _client(ctx) as client:
        team = client.create_team(slug, name, description=description)
    print_json(team) if as_json else print_record(team)


@teams.command("show")
def teams_show(ctx: typer.Context, slug: str, as_json: JsonFlag = False) -> None:
    """Show a team and its members."""
    with _client(ctx) as client:
        team = client.get_team(slug)
        members = client.list_members(slug)
    if as_json:
        print_json({"team": team, "members": members})
        return
    print_record(team)
    print_table(members, ("user_id", "email", "role", "created_at"))


@teams.command("delete")
def teams_delete(ctx: typer.Context, slug: str, as_json: JsonFlag = False) -> None:
    """Delete a team (owner)."""
    with _client(ctx) as client:
        client.delete_team(slug)
    say(f"deleted team {slug}")
    if as_json:
        print_json({"deleted": slug})


@teams.command("add")
def teams_add(
    ctx: typer.Context,
    slug: str,
    email: str,
    role: RoleOpt = "viewer",
    as_json: JsonFlag = False,
) -> None:
    """Add an existing user to a team (owner)."""
    with _client(ctx) as client:
        member = client.add_member(slug, email, _role(role))
    print_json(member) if as_json else say(f"{member.email} is now {member.role} of {slug}")


@teams.command("role")
def teams_role(
    ctx: typer.Context, slug: str, user_id: str, role: RoleOpt, as_json: JsonFlag = False
) -> None:
    """Give a member another role (owner)."""
    with _client(ctx) as client:
        member = client.set_member_role(slug, user_id, _role(role))
    print_json(member) if as_json else say(f"{member.email} is now {member.role} of {slug}")


@teams.command("remove")
def teams_remove(ctx: typer.Context, slug: str, user_id: str, as_json: JsonFlag = False) -> None:
    """Remove a member from a team (owner)."""
    with _client(ctx) as client:
        client.remove_member(slug, user_id)
    say(f"removed {user_id} from {slug}")
    if as_json:
        print_json({"removed": user_id})


@teams.command("leave")
def teams_leave(ctx: typer.Context, slug: str, as_json: JsonFlag = False) -> None:
    """Leave a team."""
    with _client(ctx) as client:
        client.remove_member(slug, client.me().id)
    say(f"left {slug}")
    if as_json:
        print_json({"left": slug})


@teams.command("invite")
def teams_invite(
    ctx: typer.Context, slug: str, email: str, role: RoleOpt = "viewer", as_json: JsonFlag = False
) -> None:
    """Invite an email to a team (owner); prints the token the invitee accepts with, once."""
    with _client(ctx) as client:
        invitation = client.invite(slug, email, _role(role))
    if as_json:
        print_json(invitation)
        return
    say(f"invited {invitation.email} as {invitation.role}; give them this token (shown once):")
    typer.echo(invitation.token)


@teams.command("accept")
def teams_accept(ctx: typer.Context, token: str, as_json: JsonFlag = False) -> None:
    """Join a team with an invitation's token (signed in with the invited email)."""
    with _client(ctx) as client:
        team = client.accept_invitation(token)
    print_json(team) if as_json else say(f"joined {team.slug} as {team.role}")
