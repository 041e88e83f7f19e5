"""Single sign-on in the browser: `/auth/sso/start` sends the browser to the OpenID provider,
`/auth/sso/callback` brings it back signed in (a dashboard session, or a one-time code for the
command line's loopback address).

Between the two, the sign-in's secrets (state, nonce, PKCE verifier, where to go next) live in a
short-lived cookie signed with the server's key, so that any replica can finish the sign-in and
only the browser that began it can: a callback whose `state` is not the cookie's is refused,
which stops another site from signing a victim in to the attacker's account.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from modelyard.auth import sso
from modelyard.auth.deps import auth_rate_limit
from modelyard.auth.oidc import OidcClient, SsoFailed, new_pkce_pair
from modelyard.db.deps import SessionDep
from modelyard.db.types import utcnow
from modelyard.errors import BadRequest, ModelyardError, NotFound
from modelyard.web import sessions
from modelyard.web.http import (
    Page,
    PageDep,
    WebRoute,
    redirect,
    render,
    safe_next,
    set_session_cookie,
)

log = logging.getLogger(__name__)

router = APIRouter(route_class=WebRoute, include_in_schema=False)

FLOW_COOKIE = "modelyard_sso"
FLOW_COOKIE_PATH = "/auth/sso"
FLOW_TTL = timedelta(minutes=10)
FLOW_TOKEN_TYPE = "sso_flow"  # noqa: S105 - a claim value, not a secret
# The command line's `state` and PKCE challenge, echoed or kept as given: bounded, URL-safe.
CLI_TOKEN = re.compile(r"^[A-Za-z0-9._~-]{16,128}$")
CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
PROVIDER_ERROR = re.compile(r"^[a-z_]{1,64}$")


def _oidc(page: Page) -> OidcClient:
    if page.state.oidc is None:
        raise NotFound("single sign-on is not configured on this server")
    return page.state.oidc


def _callback_url(request: Request) -> str:
    # The provider only redirects to the URIs registered for this client, so a forged Host
    # header cannot send the code elsewhere.
    return str(request.url_for("sso_callback"))


def _loopback_redirect(url: str) -> str:
    """Return the command line's redirect URL if it is plain HTTP to a loopback IP and port.

    Raises:
        BadRequest: anything else (a code sent to another host would hand it the sign-in).
    """
    parts = urlsplit(url)
    try:
        host = ipaddress.ip_address(parts.hostname or "")
        port = parts.port
    except ValueError:
        host, port = None, None
    if (
        parts.scheme != "http"
        or host is None
        or not host.is_loopback
        or port is None
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
        or len(url) > 200
    ):
        raise BadRequest("cli_redirect must be http://127.0.0.1:PORT/PATH (a loopback address)")
    return url


@router.get("/auth/sso/start")
async def sso_start(
    page: PageDep,
    next: str | None = None,
    cli_redirect: str | None = None,
    cli_state: str | None = None,
    cli_challenge: str | None = None,
) -> Response:
    state = page.state
    oidc = _oidc(page)
    cli: dict[str, str] | None = None
    if cli_redirect is not None or cli_state is not None or cli_challenge is not None:
        if not (cli_state and CLI_TOKEN.match(cli_state)):
            raise BadRequest("cli_state must be 16 to 128 URL-safe characters")
        if not (cli_challenge and CHALLENGE.match(cli_challenge)):
            raise BadRequest("cli_challenge must be a PKCE S256 challenge (43 characters)")
        cli = {
            "redirect": _loopback_redirect(cli_redirect or ""),
            "state": cli_state,
            "challenge": cli_challenge,
        }
    verifier, challenge = new_pkce_pair()
    flow_state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    flow = {
        "type": FLOW_TOKEN_TYPE,
        "state": flow_state,
        "nonce": nonce,
        "verifier": verifier,
        "next": safe_next(next),
        "cli": cli,
        "exp": utcnow() + FLOW_TTL,
    }
    url = await oidc.authorization_url(
        redirect_uri=_callback_url(page.request),
        state=flow_state,
        nonce=nonce,
        code_challenge=challenge,
    )
    response = redirect(url)
    response.set_cookie(
        FLOW_COOKIE,
        jwt.encode(flow, state.settings.secret, algorithm="HS256"),
        max_age=int(FLOW_TTL.total_seconds()),
        httponly=True,
        # Lax: sent on the provider's top-level redirect back to the callback.
        samesite="lax",
        secure=state.settings.is_production,
        path=FLOW_COOKIE_PATH,
    )
    return response


def _read_flow(page: Page) -> dict[str, Any]:
    token = page.request.cookies.get(FLOW_COOKIE, "")
    try:
        flow: dict[str, Any] = jwt.decode(
            token, page.state.settings.secret, algorithms=["HS256"], options={"require": ["exp"]}
        )
    except jwt.PyJWTError as exc:
        raise SsoFailed(
            "this sign-in was not started in this browser or took too long; start again"
        ) from exc
    if flow.get("type") != FLOW_TOKEN_TYPE:
        raise SsoFailed("this sign-in was not started in this browser; start again")
    return flow


@router.get("/auth/sso/callback", name="sso_callback", dependencies=[Depends(auth_rate_limit)])
async def sso_callback(
    page: PageDep,
    db: SessionDep,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    iss: str | None = None,
) -> Response:
    try:
        response = await _finish(page, db, code=code, given_state=state, error=error, iss=iss)
    except ModelyardError as exc:
        log.info("sso_sign_in_failed", extra={"reason": exc.type})
        response = _failed_page(page, exc)
    # One try per start: the flow's secrets go, whatever happened.
    response.delete_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH, httponly=True, samesite="lax")
    return response


def _failed_page(page: Page, exc: ModelyardError) -> Response:
    """The page of a failed sign-in; a command line's sign-in tells its loopback address too,
    so that the command stops waiting and says why."""
    try:
        cli = _read_flow(page).get("cli")
    except SsoFailed:
        cli = None
    if isinstance(cli, dict):
        query = urlencode(
            {"error": exc.type, "error_description": exc.detail, "state": cli["state"]}
        )
        return redirect(f"{cli['redirect']}?{query}")
    return render(page, "error.html", exc.status, title=exc.title, detail=exc.detail)


async def _finish(
    page: Page,
    db: SessionDep,
    *,
    code: str | None,
    given_state: str | None,
    error: str | None,
    iss: str | None,
) -> Response:
    app_state = page.state
    oidc = _oidc(page)
    flow = _read_flow(page)
    if given_state is None or not secrets.compare_digest(
        given_state.encode(), str(flow["state"]).encode()
    ):
        raise SsoFailed("this sign-in does not match the one started in this browser; start again")
    if error is not None:
        # Only the provider's error code is shown: its description is text anyone can put in a
        # link to this page.
        shown = error if PROVIDER_ERROR.match(error) else "unknown"
        raise SsoFailed(f"the identity provider did not sign you in ({shown})")
    # RFC 9207: a provider that names itself must be ours (a mix-up of providers is refused).
    if iss is not None and iss.rstrip("/") != oidc.issuer:
        raise SsoFailed("the sign-in came back from another identity provider")
    if not code or len(code) > 2048:
        raise SsoFailed("the identity provider sent no sign-in code")
    id_token = await oidc.exchange_code(
        code, redirect_uri=_callback_url(page.request), code_verifier=str(flow["verifier"])
    )
    identity = await oidc.verify_id_token(id_token, nonce=str(flow["nonce"]))
    user = await sso.sign_in(
        db,
        identity,
        link_verified_email=app_state.settings.oidc_link_verified_email,
        events=app_state.events,
    )
    cli = flow.get("cli")
    if isinstance(cli, dict):
        handoff = await sso.create_handoff(db, user, code_challenge=str(cli["challenge"]))
        query = urlencode({"code": handoff, "state": cli["state"]})
        return redirect(f"{cli['redirect']}?{query}")
    lifetime = timedelta(days=app_state.settings.refresh_token_expire_days)
    started = await sessions.start_session(db, user, lifetime=lifetime)
    response = redirect(safe_next(str(flow.get("next") or "/")))
    set_session_cookie(response, app_state, started.token, lifetime)
    return response
