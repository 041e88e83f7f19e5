"""What every dashboard page shares: the cookie session, CSRF checks, templates, headers, errors.

Each dashboard route uses `WebRoute`: responses get the security headers (a CSP without inline
script, `frame-ancestors 'none'`, no caching of pages), a page that needs a signed-in user sends
the browser to the sign-in page, and a `ModelyardError` is shown as an HTML page with its safe
message, never as problem+json.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import jinja2
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from modelyard.db.deps import SessionDep
from modelyard.db.tables import User, WebSession
from modelyard.edge import context
from modelyard.errors import Forbidden, ModelyardError
from modelyard.state import AppState, StateDep
from modelyard.web import sessions

HERE = Path(__file__).parent
STATIC_URL = "/static/web"
CSRF_FIELD = "csrf_token"
# Before sign-in there is no session to hold a CSRF token: a random cookie is echoed by the form
# (double submit), so that another site cannot sign a victim in to the attacker's account.
PRE_SESSION_COOKIE = "modelyard_presession"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}

templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    # Every value is HTML-escaped unless a template says otherwise (none does for user text).
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    enable_async=False,
)


class SignInRequired(Exception):
    """The page needs a signed-in user; the browser is sent to the sign-in page."""


class CrossSiteRequest(Forbidden):
    """A state-changing request that did not come from one of our pages."""

    type = "csrf"


def session_cookie_name(state: AppState) -> str:
    # `__Host-` (Secure, Path=/, no Domain) in production: no sibling host can plant or shadow it.
    return "__Host-modelyard_session" if state.settings.is_production else "modelyard_session"


@dataclass
class Page:
    """The request as pages see it: the user and session (None when signed out), the state."""

    request: Request
    state: AppState
    user: User | None = None
    session: WebSession | None = None
    pre_session_token: str | None = None

    @property
    def signed_in(self) -> User:
        if self.user is None:
            raise SignInRequired
        return self.user

    def csrf_token(self) -> str:
        if self.session is not None:
            return self.session.csrf_token
        if self.pre_session_token is None:
            existing = self.request.cookies.get(PRE_SESSION_COOKIE, "")
            self.pre_session_token = (
                existing if 20 <= len(existing) <= 64 else secrets.token_urlsafe(24)
            )
        return self.pre_session_token


async def current_page(request: Request, db: SessionDep, state: StateDep) -> Page:
    """Return the page context; the user is the live session's, if the cookie names one."""
    page = Page(request=request, state=state)
    token = request.cookies.get(session_cookie_name(state))
    if token:
        found = await sessions.find_session(db, token)
        if found is not None:
            page.session, page.user = found
            context.set_caller(page.user.id, None)
    return page


PageDep = Annotated[Page, Depends(current_page)]


async def signed_in_page(page: PageDep) -> Page:
    """Return the page context of a signed-in user (else the browser goes to sign in)."""
    if page.user is None:
        raise SignInRequired
    return page


UserPage = Annotated[Page, Depends(signed_in_page)]


def check_origin(request: Request) -> None:
    """Refuse a state-changing request that a browser says came from another site.

    Browsers send `Origin` on every form POST (and `Sec-Fetch-Site`); either naming another
    origin is refused before the form is read. The CSRF token is checked as well.

    Raises:
        CrossSiteRequest: another origin, or an opaque (`null`) one.
    """
    origin = request.headers.get("origin")
    if origin is not None:
        if origin == "null" or urlsplit(origin).netloc != request.headers.get("host", ""):
            raise CrossSiteRequest("this form was sent from another site and was refused")
    elif request.headers.get("sec-fetch-site") == "cross-site":
        raise CrossSiteRequest("this form was sent from another site and was refused")


def check_csrf(page: Page, form: Mapping[str, Any]) -> None:
    """Check a form's CSRF token against the session's (or the pre-session cookie).

    Raises:
        CrossSiteRequest: the token is missing or wrong.
    """
    given = form.get(CSRF_FIELD)
    given = given if isinstance(given, str) else None
    if page.session is not None:
        expected = page.session.csrf_token
    else:
        expected = page.request.cookies.get(PRE_SESSION_COOKIE, "")
        if len(expected) < 20:
            raise CrossSiteRequest("the form expired; reload the page and try again")
    if not sessions.csrf_matches(expected, given):
        raise CrossSiteRequest("the form expired or came from another site; reload and try again")


async def checked_form(page: PageDep) -> FormData:
    """Return the posted form of a page, after the origin and CSRF checks."""
    check_origin(page.request)
    form = await page.request.form()
    check_csrf(page, form)
    return form


FormDep = Annotated[FormData, Depends(checked_form)]


def form_text(form: FormData, name: str) -> str:
    """A form field's text ("" when absent, or a file rather than text)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


def problem_text(exc: ValidationError) -> str:
    """A form's validation errors as one line: `field: why; ...`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
        for e in exc.errors()
    )


def render(page: Page, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a template with the page context; sets the pre-session cookie when one was made."""
    html = templates.get_template(template).render(
        page=page, user=page.user, static=STATIC_URL, request=page.request, **context
    )
    response = HTMLResponse(html, status_code=status_code)
    if page.session is None and page.pre_session_token is not None:
        response.set_cookie(
            PRE_SESSION_COOKIE,
            page.pre_session_token,
            httponly=True,
            samesite="lax",
            secure=page.state.settings.is_production,
            path="/",
        )
    return response


def redirect(url: str) -> RedirectResponse:
    """Answer a form with 303 See Other: the browser follows with a GET."""
    return RedirectResponse(url, status_code=303)


def set_session_cookie(
    response: Response, state: AppState, token: str, lifetime: timedelta
) -> None:
    response.set_cookie(
        session_cookie_name(state),
        token,
        max_age=int(lifetime.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=state.settings.is_production,
        path="/",
    )
    response.delete_cookie(PRE_SESSION_COOKIE, path="/")


def clear_session_cookie(response: Response, state: AppState) -> None:
    response.delete_cookie(
        session_cookie_name(state),
        path="/",
        httponly=True,
        samesite="lax",
        secure=state.settings.is_production,
    )


def safe_next(target: str | None) -> str:
    """Return a local path to go to after sign-in; anything else (`//evil`, `https:`) is `/`."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _error_page(request: Request, status: int, title: str, detail: str) -> HTMLResponse:
    state: AppState = request.app.state.modelyard
    page = Page(request=request, state=state)
    html = templates.get_template("error.html").render(
        page=page, user=None, static=STATIC_URL, request=request, title=title, detail=detail
    )
    return HTMLResponse(html, status_code=status)


class WebRoute(APIRoute):
    """A dashboard route: security headers on every answer, HTML for every error."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def web_handler(request: Request) -> Response:
            response: Response
            try:
                response = await handler(request)
            except SignInRequired:
                target = request.url.path
                if request.url.query:
                    target += "?" + request.url.query
                response = redirect(f"/sign-in?next={quote(target, safe='')}")
                if request.method != "GET":
                    response = redirect("/sign-in")
            except ModelyardError as exc:
                response = _error_page(request, exc.status, exc.title, exc.detail)
                for name, value in exc.headers.items():
                    if name.lower() == "retry-after":
                        response.headers[name] = value
            except StarletteHTTPException as exc:  # a body past its limit (413)
                response = _error_page(request, exc.status_code, "Request refused", str(exc.detail))
            except RequestValidationError as exc:
                wrong = ", ".join(
                    str(e.get("loc", ["?"])[-1]) for e in exc.errors() if isinstance(e, dict)
                )
                response = _error_page(
                    request, 422, "Unprocessable Content", f"invalid value for: {wrong}"
                )
            response.headers.update(SECURITY_HEADERS)
            return response

        return web_handler
