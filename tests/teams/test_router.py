"""Teams over HTTP: making one, its members and their roles, invitations, leaving and deleting."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from modelyard.db.tables import TeamInvitation
from modelyard.db.types import utcnow
from modelyard.registry.schemas import Stage
from modelyard.state import AppState
from tests.support.factories import Account, make_account, make_api_key
from tests.support.problems import assert_problem

API = "/api/v1/teams"


async def make_team(
    client: httpx.AsyncClient, owner: Account, slug: str = "vision"
) -> dict[str, Any]:
    response = await client.post(
        API, json={"slug": slug, "name": slug.title()}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    team: dict[str, Any] = response.json()
    return team


async def add(
    client: httpx.AsyncClient, owner: Account, member: Account, role: str, slug: str = "vision"
) -> httpx.Response:
    return await client.post(
        f"{API}/{slug}/members", json={"email": member.email, "role": role}, headers=owner.headers
    )


async def roles(
    client: httpx.AsyncClient, account: Account, slug: str = "vision"
) -> dict[str, str]:
    response = await client.get(f"{API}/{slug}/members", headers=account.headers)
    assert response.status_code == 200, response.text
    return {m["email"]: m["role"] for m in response.json()}


async def test_the_creator_of_a_team_is_its_owner(client: httpx.AsyncClient, user: Account) -> None:
    team = await make_team(client, user)

    assert team["role"] == "owner"
    assert team["member_count"] == 1
    assert team["protected_stages"] == ["production"]
    listed = (await client.get(API, headers=user.headers)).json()
    assert [(t["slug"], t["role"]) for t in listed] == [("vision", "owner")]
    assert await roles(client, user) == {user.email: "owner"}


async def test_a_slug_names_one_team(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await make_team(client, user)

    taken = await client.post(API, json={"slug": "vision", "name": "x"}, headers=other_user.headers)
    assert_problem(taken, 409)
    for bad in ("Vision", "-vision", "vision-", "a/b", "x" * 65, ""):
        refused = await client.post(API, json={"slug": bad, "name": "x"}, headers=user.headers)
        assert_problem(refused, 422)


async def test_a_team_is_404_to_anyone_outside_it(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await make_team(client, user)
    team = f"{API}/vision"

    for method, path, body in (
        ("GET", team, None),
        ("PATCH", team, {"name": "mine"}),
        ("DELETE", team, None),
        ("GET", f"{team}/members", None),
        ("POST", f"{team}/members", {"email": other_user.email}),
        ("POST", f"{team}/invitations", {"email": other_user.email}),
        ("DELETE", f"{team}/members/{user.id}", None),
    ):
        answer = await client.request(method, path, json=body, headers=other_user.headers)
        assert_problem(answer, 404)
    assert (await client.get(API, headers=other_user.headers)).json() == []
    # A team that does not exist answers the same.
    assert_problem(await client.get(f"{API}/nothing", headers=other_user.headers), 404)


async def test_the_owner_adds_existing_users_with_a_role(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await make_team(client, user)

    added = await add(client, user, other_user, "editor")
    assert added.status_code == 201, added.text
    assert added.json()["role"] == "editor"
    assert await roles(client, other_user) == {user.email: "owner", other_user.email: "editor"}
    seen = (await client.get(f"{API}/vision", headers=other_user.headers)).json()
    assert (seen["role"], seen["member_count"]) == ("editor", 2)
    assert_problem(await add(client, user, other_user, "viewer"), 409)
    unknown = await client.post(
        f"{API}/vision/members", json={"email": "nobody@example.com"}, headers=user.headers
    )
    assert "invite" in assert_problem(unknown, 404)["detail"]


@pytest.mark.parametrize("role", ["viewer", "editor", "maintainer"])
async def test_only_the_owner_manages_members(
    client: httpx.AsyncClient, user: Account, other_user: Account, role: str
) -> None:
    await make_team(client, user)
    assert (await add(client, user, other_user, role)).status_code == 201
    third = await make_account(client)

    refused = await add(client, other_user, third, "viewer")
    assert assert_problem(refused, 403)["type"].endswith("team-role-required")
    demote = await client.patch(
        f"{API}/vision/members/{user.id}", json={"role": "viewer"}, headers=other_user.headers
    )
    assert_problem(demote, 403)
    remove = await client.delete(f"{API}/vision/members/{user.id}", headers=other_user.headers)
    assert_problem(remove, 403)
    invite = await client.post(
        f"{API}/vision/invitations", json={"email": third.email}, headers=other_user.headers
    )
    assert_problem(invite, 403)
    assert_problem(await client.delete(f"{API}/vision", headers=other_user.headers), 403)
    assert await roles(client, user) == {user.email: "owner", other_user.email: role}


async def test_a_maintainer_renames_the_team_but_only_the_owner_changes_its_protections(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await make_team(client, user)
    await add(client, user, other_user, "maintainer")

    renamed = await client.patch(
        f"{API}/vision", json={"name": "Computer vision"}, headers=other_user.headers
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Computer vision"
    for change in (
        {"require_approval": True},
        {"protected_stages": ["production", "staging"]},
        {"protected_aliases": ["champion"]},
    ):
        assert_problem(
            await client.patch(f"{API}/vision", json=change, headers=other_user.headers), 403
        )
    owner = await client.patch(
        f"{API}/vision",
        json={"require_approval": True, "protected_stages": ["staging", "production"]},
        headers=user.headers,
    )
    assert owner.status_code == 200, owner.text
    assert owner.json()["require_approval"] is True
    assert owner.json()["protected_stages"] == ["production", "staging"]
    bad = await client.patch(
        f"{API}/vision", json={"protected_stages": ["development"]}, headers=user.headers
    )
    assert_problem(bad, 422)


async def test_a_team_keeps_an_owner(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await make_team(client, user)
    await add(client, user, other_user, "editor")

    demote = await client.patch(
        f"{API}/vision/members/{user.id}", json={"role": "maintainer"}, headers=user.headers
    )
    assert_problem(demote, 409)
    assert_problem(
        await client.delete(f"{API}/vision/members/{user.id}", headers=user.headers), 409
    )
    promoted = await client.patch(
        f"{API}/vision/members/{other_user.id}", json={"role": "owner"}, headers=user.headers
    )
    assert promoted.json()["role"] == "owner"
    left = await client.delete(f"{API}/vision/members/{user.id}", headers=user.headers)
    assert left.status_code == 204, left.text
    assert await roles(client, other_user) == {other_user.email: "owner"}
    assert_problem(await client.get(f"{API}/vision", headers=user.headers), 404)


async def test_any_member_can_leave(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await make_team(client, user)
    await add(client, user, other_user, "viewer")

    left = await client.delete(f"{API}/vision/members/{other_user.id}", headers=other_user.headers)

    assert left.status_code == 204, left.text
    assert await roles(client, user) == {user.email: "owner"}
    assert (await client.get(API, headers=other_user.headers)).json() == []


async def test_an_invitation_is_accepted_once_by_its_email(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await make_team(client, user)
    invitee_email = "later@example.com"
    made = await client.post(
        f"{API}/vision/invitations",
        json={"email": invitee_email, "role": "editor"},
        headers=user.headers,
    )
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    pending = (await client.get(f"{API}/vision/invitations", headers=user.headers)).json()
    assert [(i["email"], i["role"]) for i in pending] == [(invitee_email, "editor")]
    assert "token" not in pending[0]

    # Someone else holding the token cannot use it.
    stolen = await client.post(
        f"{API}/invitations/accept", json={"token": token}, headers=other_user.headers
    )
    assert_problem(stolen, 404)
    invitee = await make_account(client, email=invitee_email)
    joined = await client.post(
        f"{API}/invitations/accept", json={"token": token}, headers=invitee.headers
    )
    assert joined.status_code == 200, joined.text
    assert (joined.json()["slug"], joined.json()["role"]) == ("vision", "editor")
    assert (await roles(client, user))[invitee_email] == "editor"
    again = await client.post(
        f"{API}/invitations/accept", json={"token": token}, headers=invitee.headers
    )
    assert_problem(again, 404)
    assert (await client.get(f"{API}/vision/invitations", headers=user.headers)).json() == []


async def test_a_withdrawn_invitation_cannot_be_accepted(
    client: httpx.AsyncClient, user: Account
) -> None:
    await make_team(client, user)
    made = (
        await client.post(
            f"{API}/vision/invitations", json={"email": "w@example.com"}, headers=user.headers
        )
    ).json()

    withdrawn = await client.delete(f"{API}/vision/invitations/{made['id']}", headers=user.headers)
    assert withdrawn.status_code == 204, withdrawn.text
    invitee = await make_account(client, email="w@example.com")
    accept = await client.post(
        f"{API}/invitations/accept", json={"token": made["token"]}, headers=invitee.headers
    )
    assert_problem(accept, 404)


async def test_the_owner_deletes_the_team(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await make_team(client, user)
    await add(client, user, other_user, "maintainer")

    deleted = await client.delete(f"{API}/vision", headers=user.headers)

    assert deleted.status_code == 204, deleted.text
    assert_problem(await client.get(f"{API}/vision", headers=other_user.headers), 404)
    assert (await client.get(API, headers=other_user.headers)).json() == []
    # The slug is free again.
    await make_team(client, other_user)


async def test_team_changes_are_in_the_audit_log(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await make_team(client, user)
    await add(client, user, other_user, "editor")

    rows = (
        await client.get("/api/v1/audit", params={"action": "team."}, headers=user.headers)
    ).json()["items"]

    assert [r["action"] for r in rows] == ["team.member_added", "team.created"]
    assert rows[0]["details"] == {"user_id": other_user.id, "role": "editor"}


async def test_a_read_only_key_cannot_make_a_team(client: httpx.AsyncClient, user: Account) -> None:
    key = await make_api_key(client, user, scopes=["read", "predict"])

    refused = await client.post(
        API, json={"slug": "vision", "name": "V"}, headers={"Authorization": f"Bearer {key}"}
    )

    assert_problem(refused, 403)
    listed = await client.get(API, headers={"Authorization": f"Bearer {key}"})
    assert listed.status_code == 200


async def test_the_last_owner_of_a_team_with_members_cannot_erase_the_account(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    await make_team(client, user)
    await add(client, user, other_user, "editor")
    await make_team(client, user, "solo")

    refused = await client.delete("/api/v1/auth/me", headers=user.headers)
    assert "another owner" in assert_problem(refused, 409)["detail"]
    await client.patch(
        f"{API}/vision/members/{other_user.id}", json={"role": "owner"}, headers=user.headers
    )
    erased = await client.delete("/api/v1/auth/me", headers=user.headers)

    assert erased.status_code == 204, erased.text
    assert await roles(client, other_user) == {other_user.email: "owner"}
    # The team the account was alone in went with it.
    assert_problem(await client.get(f"{API}/solo", headers=other_user.headers), 404)
    await make_team(client, other_user, "solo")


def test_the_protectable_stages_are_the_registry_s_but_development() -> None:
    from typing import get_args

    from modelyard.teams.schemas import StageName

    pattern = get_args(StageName)[1].pattern
    assert pattern == "^(" + "|".join(s.value for s in Stage if s != Stage.DEVELOPMENT) + ")$"


async def test_an_expired_invitation_cannot_be_accepted(
    client: httpx.AsyncClient, app: FastAPI, user: Account
) -> None:
    await make_team(client, user)
    made = (
        await client.post(
            f"{API}/vision/invitations", json={"email": "late@example.com"}, headers=user.headers
        )
    ).json()
    state: AppState = app.state.modelyard
    async with state.sessions() as db:
        await db.execute(
            update(TeamInvitation)
            .where(TeamInvitation.id == uuid.UUID(made["id"]))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await db.commit()

    invitee = await make_account(client, email="late@example.com")
    accept = await client.post(
        f"{API}/invitations/accept", json={"token": made["token"]}, headers=invitee.headers
    )

    assert_problem(accept, 404)
    assert (await client.get(f"{API}/vision/invitations", headers=user.headers)).json() == []
