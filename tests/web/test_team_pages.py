"""The teams pages over HTTP (no browser), on both databases: make a team, add and invite
members, change roles, leave and delete, and what a member who does not own the team sees."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.web.test_pages import post_form, sign_up


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A second browser (its own cookies) on the same app."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def member_roles(html: str) -> dict[str, str]:
    """Email -> role of the members table (the selected option, or the plain text)."""
    roles = {}
    for row in re.findall(r'<tr data-email="([^"]+)">(.*?)</tr>', html, re.S):
        email, cells = row
        chosen = re.search(r'<option value="(\w+)" selected>', cells)
        plain = re.findall(r"<td>(viewer|editor|maintainer|owner)</td>", cells)
        roles[email] = chosen.group(1) if chosen else plain[0]
    return roles


async def test_a_team_is_made_and_members_added_from_the_dashboard(
    client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    owner = await sign_up(client)
    member = await sign_up(browser)

    made = await post_form(client, "/teams", "/teams", slug="vision", name="Vision")
    assert made.status_code == 303
    assert made.headers["location"] == "/teams/vision"
    added = await post_form(
        client, "/teams/vision", "/teams/vision/members", email=member, role="editor"
    )
    assert added.status_code == 200, added.text
    assert f"Added {member} as editor." in added.text
    assert member_roles(added.text) == {owner: "owner", member: "editor"}

    # The member sees the team, the roles as text, and no owner's forms.
    theirs = await browser.get("/teams/vision")
    assert theirs.status_code == 200
    assert member_roles(theirs.text) == {owner: "owner", member: "editor"}
    assert 'id="add-member"' not in theirs.text
    assert 'id="delete-team"' not in theirs.text
    listed = await browser.get("/teams")
    assert 'href="/teams/vision"' in listed.text


async def test_roles_change_and_a_member_leaves(
    client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    owner = await sign_up(client)
    member = await sign_up(browser)
    await post_form(client, "/teams", "/teams", slug="ops", name="Ops")
    page = await post_form(client, "/teams/ops", "/teams/ops/members", email=member, role="viewer")
    # Each member's id, from the action of the role form on their row.
    ids = {
        email: uid
        for uid, email in re.findall(
            r'members/([0-9a-f-]{36})/role".*?Role of ([^"]+)"', page.text, re.S
        )
    }
    assert set(ids) == {owner, member}

    changed = await post_form(
        client, "/teams/ops", f"/teams/ops/members/{ids[member]}/role", role="maintainer"
    )
    assert f"{member} is now maintainer." in changed.text
    refused = await post_form(
        client, "/teams/ops", f"/teams/ops/members/{ids[owner]}/role", role="viewer"
    )
    assert refused.status_code == 409
    assert "another owner" in refused.text
    left = await post_form(browser, "/teams/ops", f"/teams/ops/members/{ids[member]}/remove")
    assert "You left ops." in left.text
    assert (await browser.get("/teams/ops")).status_code == 404


async def test_an_invitation_shows_its_token_once_and_joins(
    client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    await sign_up(client)
    invited = await post_form(client, "/teams", "/teams", slug="nlp", name="NLP")
    assert invited.status_code == 303
    email = "invitee@example.com"
    shown = await post_form(
        client, "/teams/nlp", "/teams/nlp/invitations", email=email, role="editor"
    )
    token = re.search(r'<code id="invitation-token" class="wrap">([^<]+)</code>', shown.text)
    assert token is not None, shown.text
    assert token.group(1) not in (await client.get("/teams/nlp")).text

    await sign_up(browser, email)
    joined = await post_form(browser, "/teams", "/teams/accept", token=token.group(1))
    assert joined.status_code == 303
    assert joined.headers["location"] == "/teams/nlp"
    again = await post_form(browser, "/teams", "/teams/accept", token=token.group(1))
    assert again.status_code == 404


async def test_others_get_404_and_deleting_needs_the_slug_typed(
    client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    await sign_up(client)
    await sign_up(browser)
    await post_form(client, "/teams", "/teams", slug="fraud", name="Fraud")

    assert (await browser.get("/teams/fraud")).status_code == 404
    html = (await browser.get("/teams")).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    stranger = await browser.post(
        "/teams/fraud/delete", data={"csrf_token": token.group(1), "confirm": "fraud"}
    )
    assert stranger.status_code == 404
    unconfirmed = await post_form(client, "/teams/fraud", "/teams/fraud/delete", confirm="x")
    assert unconfirmed.status_code == 422
    deleted = await post_form(client, "/teams/fraud", "/teams/fraud/delete", confirm="fraud")
    assert "Deleted team fraud." in deleted.text
    assert (await client.get("/teams/fraud")).status_code == 404


async def test_a_bad_handle_is_refused_and_kept_in_the_form(client: httpx.AsyncClient) -> None:
    await sign_up(client)

    refused = await post_form(client, "/teams", "/teams", slug="Not Valid", name="X")

    assert refused.status_code == 422
    assert 'value="Not Valid"' in refused.text
