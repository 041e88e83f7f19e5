"""Teams through the SDK and the `modelyard teams` commands, against a live server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import typer

from modelyard_client import AsyncClient, Client
from modelyard_client.cli import make_app
from modelyard_client.errors import Forbidden, NotFound
from tests.client.test_commands import as_key, parsed, run
from tests.support.live import Login, make_login


@pytest.fixture
def client(login: Login) -> Iterator[Client]:
    with Client(login.url, api_key=login.api_key) as client:
        yield client


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return make_app()


def test_the_sdk_manages_a_team_and_its_members(client: Client, login: Login) -> None:
    other = make_login(login.url)
    team = client.create_team("vision", "Computer vision")
    assert (team.slug, team.role, team.member_count) == ("vision", "owner", 1)

    member = client.add_member("vision", other.email, "editor")
    assert member.role == "editor"
    with Client(login.url, api_key=other.api_key) as theirs:
        assert [(t.slug, t.role) for t in theirs.list_teams()] == [("vision", "editor")]
        with pytest.raises(Forbidden):
            theirs.add_member("vision", login.email, "viewer")
    client.set_member_role("vision", member.user_id, "maintainer")
    assert {m.email: m.role for m in client.list_members("vision")} == {
        login.email: "owner",
        other.email: "maintainer",
    }
    client.remove_member("vision", member.user_id)
    with Client(login.url, api_key=other.api_key) as theirs, pytest.raises(NotFound):
        theirs.get_team("vision")
    client.delete_team("vision")
    assert client.list_teams() == []


async def test_the_async_sdk_invites_and_accepts(login: Login) -> None:
    invitee = make_login(login.url)
    async with AsyncClient(login.url, api_key=login.api_key) as owner:
        await owner.create_team("nlp")
        invitation = await owner.invite("nlp", invitee.email, "viewer")
        assert invitation.token
        assert [i.email for i in await owner.list_invitations("nlp")] == [invitee.email]
    async with AsyncClient(login.url, api_key=invitee.api_key) as theirs:
        joined = await theirs.accept_invitation(invitation.token)
    assert (joined.slug, joined.role) == ("nlp", "viewer")


def test_the_teams_commands(app: typer.Typer, login: Login) -> None:
    other = make_login(login.url)
    mine, theirs = as_key(login), as_key(other)

    created = parsed(run(app, "teams", "create", "fraud", "--name", "Fraud", "--json", env=mine))
    assert created["role"] == "owner"
    added = parsed(
        run(app, "teams", "add", "fraud", other.email, "--role", "editor", "--json", env=mine)
    )
    assert added["role"] == "editor"
    listed = parsed(run(app, "teams", "list", "--json", env=theirs))
    assert [(t["slug"], t["role"]) for t in listed] == [("fraud", "editor")]
    shown = parsed(run(app, "teams", "show", "fraud", "--json", env=theirs))
    assert {m["email"] for m in shown["members"]} == {login.email, other.email}
    bad_role = run(app, "teams", "add", "fraud", other.email, "--role", "boss", env=mine)
    assert bad_role.exit_code == 2
    left = run(app, "teams", "leave", "fraud", env=theirs)
    assert left.exit_code == 0, left.output
    assert parsed(run(app, "teams", "list", "--json", env=theirs)) == []
    refused = run(app, "teams", "show", "fraud", env=theirs)
    assert refused.exit_code == 1
    assert "not found" in refused.output


def test_an_invitation_token_is_printed_once_and_accepted(app: typer.Typer, login: Login) -> None:
    invitee = make_login(login.url)
    run(app, "teams", "create", "ops", env=as_key(login))

    invited = run(
        app, "teams", "invite", "ops", invitee.email, "--role", "maintainer", env=as_key(login)
    )
    assert invited.exit_code == 0, invited.output
    token = invited.stdout.strip().splitlines()[-1]
    joined = run(app, "teams", "accept", token, env=as_key(invitee))

    assert joined.exit_code == 0, joined.output
    assert "joined ops as maintainer" in joined.output
