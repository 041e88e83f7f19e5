"""Dashboard pages of teams: your teams, a team's members and roles, invitations."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError
from starlette.responses import Response

from modelyard.db.deps import SessionDep
from modelyard.errors import ModelyardError
from modelyard.teams import service
from modelyard.teams.roles import Role
from modelyard.teams.schemas import InvitationCreate, MemberAdd, TeamCreate
from modelyard.web.http import (
    FormDep,
    Page,
    UserPage,
    WebRoute,
    form_text,
    problem_text,
    redirect,
    render,
)

router = APIRouter(route_class=WebRoute, include_in_schema=False)


async def _list(page: Page, db: SessionDep, status: int = 200, **context: Any) -> Response:
    memberships = await service.list_teams(db, page.signed_in)
    counts = await service.member_counts(db, [m.team.id for m in memberships])
    context = {"error": None, "message": None, "slug": "", "name": "", **context}
    return render(page, "teams.html", status, teams=memberships, counts=counts, **context)


async def _team(
    page: Page, db: SessionDep, slug: str, status: int = 200, **context: Any
) -> Response:
    membership = await service.get_team(db, page.signed_in, slug)
    members = await service.list_members(db, membership)
    manages = membership.role is None or membership.role == Role.OWNER
    invitations = await service.list_invitations(db, membership) if manages else []
    context = {"error": None, "message": None, "invited": None, **context}
    return render(
        page,
        "team.html",
        status,
        team=membership.team,
        role=membership.role,
        manages=manages,
        members=members,
        invitations=invitations,
        roles=list(Role),
        **context,
    )


@router.get("/teams")
async def teams_page(page: UserPage, db: SessionDep) -> Response:
    return await _list(page, db)


@router.post("/teams")
async def create_team(page: UserPage, form: FormDep, db: SessionDep) -> Response:
    slug, name = form_text(form, "slug"), form_text(form, "name")
    try:
        data = TeamCreate(slug=slug, name=name or slug)
        await service.create_team(db, page.signed_in, data, events=page.state.events)
    except ValidationError as exc:
        return await _list(page, db, 422, error=problem_text(exc), slug=slug, name=name)
    except ModelyardError as exc:
        return await _list(page, db, exc.status, error=exc.detail, slug=slug, name=name)
    return redirect(f"/teams/{data.slug}")


@router.post("/teams/accept")
async def accept_invitation(page: UserPage, form: FormDep, db: SessionDep) -> Response:
    token = form_text(form, "token").strip()[:200]
    try:
        joined = await service.accept_invitation(
            db, page.signed_in, token, events=page.state.events
        )
    except ModelyardError as exc:
        return await _list(page, db, exc.status, error=exc.detail)
    return redirect(f"/teams/{joined.team.slug}")


@router.get("/teams/{slug}")
async def team_page(slug: str, page: UserPage, db: SessionDep) -> Response:
    return await _team(page, db, slug)


@router.post("/teams/{slug}/members")
async def add_member(slug: str, page: UserPage, form: FormDep, db: SessionDep) -> Response:
    membership = await service.get_team(db, page.signed_in, slug)
    try:
        data = MemberAdd(email=form_text(form, "email"), role=form_text(form, "role") or "viewer")
        added = await service.add_member(db, membership, data, events=page.state.events)
    except ValidationError as exc:
        return await _team(page, db, slug, 422, error=problem_text(exc))
    except ModelyardError as exc:
        return await _team(page, db, slug, exc.status, error=exc.detail)
    return await _team(page, db, slug, message=f"Added {added[1].email} as {added[0].role}.")


@router.post("/teams/{slug}/members/{user_id}/role")
async def change_role(
    slug: str, user_id: uuid.UUID, page: UserPage, form: FormDep, db: SessionDep
) -> Response:
    membership = await service.get_team(db, page.signed_in, slug)
    try:
        role = Role(form_text(form, "role"))
        member, user = await service.change_role(
            db, membership, user_id, role, events=page.state.events
        )
    except ValueError:
        return await _team(page, db, slug, 422, error="choose viewer, editor, maintainer or owner")
    except ModelyardError as exc:
        return await _team(page, db, slug, exc.status, error=exc.detail)
    return await _team(page, db, slug, message=f"{user.email} is now {member.role}.")


@router.post("/teams/{slug}/members/{user_id}/remove")
async def remove_member(
    slug: str, user_id: uuid.UUID, page: UserPage, form: FormDep, db: SessionDep
) -> Response:
    user = page.signed_in
    membership = await service.get_team(db, user, slug)
    try:
        await service.remove_member(db, membership, user, user_id, events=page.state.events)
    except ModelyardError as exc:
        return await _team(page, db, slug, exc.status, error=exc.detail)
    if user_id == user.id:
        return await _list(page, db, message=f"You left {slug}.")
    return await _team(page, db, slug, message="Member removed.")


@router.post("/teams/{slug}/invitations")
async def invite(slug: str, page: UserPage, form: FormDep, db: SessionDep) -> Response:
    membership = await service.get_team(db, page.signed_in, slug)
    try:
        data = InvitationCreate(
            email=form_text(form, "email"), role=form_text(form, "role") or "viewer"
        )
        invitation, token = await service.invite(db, membership, data, events=page.state.events)
    except ValidationError as exc:
        return await _team(page, db, slug, 422, error=problem_text(exc))
    except ModelyardError as exc:
        return await _team(page, db, slug, exc.status, error=exc.detail)
    return await _team(page, db, slug, invited={"email": invitation.email, "token": token})


@router.post("/teams/{slug}/invitations/{invitation_id}/revoke")
async def revoke_invitation(
    slug: str, invitation_id: uuid.UUID, page: UserPage, form: FormDep, db: SessionDep
) -> Response:
    membership = await service.get_team(db, page.signed_in, slug)
    try:
        await service.revoke_invitation(db, membership, invitation_id)
    except ModelyardError as exc:
        return await _team(page, db, slug, exc.status, error=exc.detail)
    return await _team(page, db, slug, message="Invitation withdrawn.")


@router.post("/teams/{slug}/delete")
async def delete_team(slug: str, page: UserPage, form: FormDep, db: SessionDep) -> Response:
    membership = await service.get_team(db, page.signed_in, slug)
    if form_text(form, "confirm") != slug:
        return await _team(page, db, slug, 422, error=f"type {slug} to confirm the deletion")
    try:
        await service.delete_team(db, membership, events=page.state.events)
    except ModelyardError as exc:
        return await _team(page, db, slug, exc.status, error=exc.detail)
    return await _list(page, db, message=f"Deleted team {slug}.")
