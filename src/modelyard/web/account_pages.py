"""Dashboard pages of people: sign in, sign up, sign out, account, API keys, admin users."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from starlette.responses import Response

from modelyard.accounts import erasure
from modelyard.auth import service as auth_service
from modelyard.auth.deps import PasswordsDisabled, auth_rate_limit
from modelyard.auth.schemas import ApiKeyCreate, MeUpdate, UserAdminUpdate, UserCreate
from modelyard.auth.scopes import DEFAULT_SCOPES, Scope
from modelyard.db.deps import SessionDep
from modelyard.errors import Forbidden, ModelyardError, Unauthorized
from modelyard.schemas import PageParams
from modelyard.web import sessions
from modelyard.web.http import (
    FormDep,
    Page,
    PageDep,
    UserPage,
    WebRoute,
    clear_session_cookie,
    form_text,
    problem_text,
    redirect,
    render,
    safe_next,
    set_session_cookie,
)

router = APIRouter(route_class=WebRoute, include_in_schema=False)

PAGE_SIZE = 25
Offset = Annotated[int, Query(ge=0, le=2**31)]


def _lifetime(page: Page) -> timedelta:
    return timedelta(days=page.state.settings.refresh_token_expire_days)


@router.get("/sign-in")
async def sign_in_form(page: PageDep, next: str | None = None) -> Response:
    if page.user is not None:
        return redirect(safe_next(next))
    return _sign_in_page(page, 200, next=safe_next(next), email="", error=None)


def _sign_in_page(page: Page, status: int, **context: object) -> HTMLResponse:
    settings = page.state.settings
    return render(
        page,
        "sign_in.html",
        status,
        sso_name=settings.oidc_display_name if settings.sso_enabled else None,
        local_passwords=settings.local_passwords,
        **context,
    )


@router.post("/sign-in", dependencies=[Depends(auth_rate_limit)])
async def sign_in(page: PageDep, form: FormDep, db: SessionDep) -> Response:
    email, password = form_text(form, "email")[:320], form_text(form, "password")[:1024]
    target = safe_next(form_text(form, "next"))
    state = page.state
    if not state.settings.local_passwords:
        return _sign_in_page(page, 403, next=target, email="", error=PasswordsDisabled().detail)
    try:
        user = await auth_service.check_password(
            db,
            email,
            password,
            passwords=state.passwords,
            failures=state.failures,
            events=state.events,
        )
    except ModelyardError as exc:
        return _sign_in_page(page, exc.status, next=target, email=email, error=exc.detail)
    started = await sessions.start_session(db, user, lifetime=_lifetime(page))
    response = redirect(target)
    set_session_cookie(response, state, started.token, _lifetime(page))
    return response


@router.get("/sign-up")
async def sign_up_form(page: PageDep) -> Response:
    if page.user is not None:
        return redirect("/")
    if not page.state.settings.local_passwords:
        return redirect("/sign-in")
    return render(page, "sign_up.html", email="", full_name="", error=None)


@router.post("/sign-up", dependencies=[Depends(auth_rate_limit)])
async def sign_up(page: PageDep, form: FormDep, db: SessionDep) -> Response:
    email, full_name = form_text(form, "email"), form_text(form, "full_name")
    state = page.state

    def again(status: int, error: str) -> HTMLResponse:
        return render(page, "sign_up.html", status, email=email, full_name=full_name, error=error)

    if not state.settings.local_passwords:
        return again(403, PasswordsDisabled().detail)
    if form_text(form, "password") != form_text(form, "password_again"):
        return again(422, "the two passwords differ")
    try:
        data = UserCreate(
            email=email, password=form_text(form, "password"), full_name=full_name or None
        )
    except ValidationError as exc:
        return again(422, problem_text(exc))
    try:
        user = await auth_service.register_user(
            db, data, passwords=state.passwords, events=state.events
        )
    except ModelyardError as exc:
        return again(exc.status, exc.detail)
    started = await sessions.start_session(db, user, lifetime=_lifetime(page))
    response = redirect("/")
    set_session_cookie(response, state, started.token, _lifetime(page))
    return response


@router.post("/sign-out")
async def sign_out(page: PageDep, form: FormDep, db: SessionDep) -> Response:
    if page.session is not None:
        await sessions.end_session(db, page.session)
        # The session's open event streams end too, on every worker and replica.
        await page.state.events.credentials_changed(user_id=page.session.user_id)
    response = redirect("/sign-in")
    clear_session_cookie(response, page.state)
    return response


# --- account ------------------------------------------------------------------------------------


@router.get("/account")
async def account(page: UserPage) -> Response:
    return render(page, "account.html", message=None, error=None)


@router.post("/account")
async def update_account(page: UserPage, form: FormDep, db: SessionDep) -> Response:
    user = page.signed_in
    state = page.state
    fields: dict[str, str | None] = {}
    if "full_name" in form:
        fields["full_name"] = form_text(form, "full_name") or None
    if form_text(form, "password"):
        fields["password"] = form_text(form, "password")
        fields["current_password"] = form_text(form, "current_password")
    try:
        data = MeUpdate.model_validate(fields)
        await auth_service.update_me(
            db, user, data, passwords=state.passwords, failures=state.failures, events=state.events
        )
    except ValidationError as exc:
        return render(page, "account.html", 422, message=None, error=problem_text(exc))
    except ModelyardError as exc:
        return render(page, "account.html", exc.status, message=None, error=exc.detail)
    if "password" in fields:
        # Every session ended with the old password, this one too: sign in with the new one.
        response = redirect("/sign-in")
        clear_session_cookie(response, state)
        return response
    return render(page, "account.html", message="Saved.", error=None)


@router.post("/account/sign-out-everywhere")
async def sign_out_everywhere(page: UserPage, form: FormDep, db: SessionDep) -> Response:
    await auth_service.logout_everywhere(db, page.signed_in, events=page.state.events)
    response = redirect("/sign-in")
    clear_session_cookie(response, page.state)
    return response


@router.post("/account/delete")
async def delete_account(page: UserPage, form: FormDep, db: SessionDep) -> Response:
    """Erase the signed-in account, once its password confirms that its owner is at the keyboard
    (an open session alone is not enough to destroy everything)."""
    user = page.signed_in
    state = page.state
    try:
        await auth_service.check_password(
            db,
            user.email,
            form_text(form, "password")[:1024],
            passwords=state.passwords,
            failures=state.failures,
            events=state.events,
            sign_in=False,
        )
        await erasure.erase_own_account(
            db,
            auth_service.Caller(user, None),
            store=state.store,
            events=state.events,
            prediction_log=state.prediction_log,
        )
    except Unauthorized:
        return render(page, "account.html", 403, message=None, error="the password is incorrect")
    except ModelyardError as exc:
        return render(page, "account.html", exc.status, message=None, error=exc.detail)
    response = redirect("/sign-in")
    clear_session_cookie(response, state)
    return response


# --- API keys -----------------------------------------------------------------------------------


SCOPE_HELP = {
    Scope.READ: "read models, versions, files, experiments and predictions",
    Scope.PREDICT: "make predictions",
    Scope.WRITE: "upload, change stages and aliases, files, experiments",
    Scope.ADMIN: "administer users, read metrics",
}


async def _keys_page(
    page: Page, db: SessionDep, offset: int, status: int = 200, **extra: object
) -> HTMLResponse:
    keys, total = await auth_service.list_api_keys(
        db, page.signed_in, PageParams(limit=PAGE_SIZE, offset=offset)
    )
    context: dict[str, object] = {"created": None, "error": None, **extra}
    return render(
        page,
        "api_keys.html",
        status,
        keys=keys,
        total=total,
        offset=offset,
        limit=PAGE_SIZE,
        scope_choices=[
            (scope, hint)
            for scope, hint in SCOPE_HELP.items()
            if scope != Scope.ADMIN or page.signed_in.is_admin
        ],
        default_scopes=DEFAULT_SCOPES,
        **context,
    )


@router.get("/api-keys")
async def api_keys(page: UserPage, db: SessionDep, offset: Offset = 0) -> Response:
    return await _keys_page(page, db, offset)


@router.post("/api-keys")
async def create_api_key(page: UserPage, form: FormDep, db: SessionDep) -> Response:
    expires = form_text(form, "expires_at")
    try:
        data = ApiKeyCreate.model_validate(
            {
                "name": form_text(form, "name"),
                "expires_at": f"{expires}T00:00:00Z" if expires else None,
                # The page's checkboxes (none ticked: 422); a form without them: the default.
                "scopes": form.getlist("scopes") if "scopes_shown" in form else None,
                # Model names, comma separated; none: every model.
                "models": [m.strip() for m in form_text(form, "models").split(",") if m.strip()]
                or None,
            }
        )
        created = await auth_service.create_api_key(
            db, auth_service.Caller(page.signed_in, None), data, events=page.state.events
        )
    except ValidationError as exc:
        return await _keys_page(page, db, 0, 422, error=problem_text(exc))
    except ModelyardError as exc:
        return await _keys_page(page, db, 0, exc.status, error=exc.detail)
    # Shown on this answer only (not a redirect): the secret is never stored to be shown again.
    return await _keys_page(page, db, 0, 201, created=created)


@router.post("/api-keys/{key_id}/revoke")
async def revoke_api_key(
    key_id: uuid.UUID, page: UserPage, form: FormDep, db: SessionDep
) -> Response:
    await auth_service.revoke_api_key(db, page.signed_in, key_id, events=page.state.events)
    return redirect("/api-keys")


# --- administration -----------------------------------------------------------------------------


def _admin(page: Page) -> None:
    if not page.signed_in.is_admin:
        raise Forbidden("this page is for administrators")


@router.get("/admin/users")
async def admin_users(page: UserPage, db: SessionDep, offset: Offset = 0) -> Response:
    _admin(page)
    users, total = await auth_service.list_users(db, PageParams(limit=PAGE_SIZE, offset=offset))
    return render(
        page, "admin_users.html", users=users, total=total, offset=offset, limit=PAGE_SIZE
    )


@router.post("/admin/users/{user_id}")
async def admin_update_user(
    user_id: uuid.UUID, page: UserPage, form: FormDep, db: SessionDep
) -> Response:
    _admin(page)
    changes: dict[str, bool] = {}
    for name in ("is_active", "is_admin"):
        if name in form:
            changes[name] = form_text(form, name) == "true"
    await auth_service.update_user(
        db, page.signed_in, user_id, UserAdminUpdate(**changes), events=page.state.events
    )
    return redirect("/admin/users")
