"""Single sign-on against a real OpenID provider (oidc-provider on 127.0.0.1), on both
databases: the dashboard's sign-in, the command line's handoff, and every broken case failing
safely (wrong state or nonce, a spent code, another audience, a provider that is down)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import jwt
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from typer.testing import CliRunner

from modelyard.app import create_app
from modelyard.auth.oidc import SsoFailed, new_pkce_pair
from modelyard.config import Settings
from modelyard.db.tables import SsoHandoff, SsoIdentity, User
from modelyard.state import AppState
from modelyard_client.cli import make_app
from modelyard_client.sso import SsoLoginFailed, browser_sign_in
from modelyard_client.sync import Client
from tests.auth.openid import (
    CLIENT_ID,
    CLIENT_SECRET,
    OTHER_CLIENT_ID,
    OTHER_CLIENT_SECRET,
    TEST_CALLBACK,
    OpenIdProvider,
    Person,
    new_person,
    running_provider,
)
from tests.support.factories import lifespan, make_account
from tests.support.servers import free_port
from tests.support.settings import make_settings

BASE = "http://testserver"


@pytest.fixture(scope="session")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenIdProvider]:
    log = tmp_path_factory.mktemp("oidc") / "provider.log"
    with running_provider(log, live_ports=(free_port(), free_port())) as running_one:
        yield running_one


def sso_settings(issuer: str, **overrides: object) -> dict[str, object]:
    return {
        "oidc_issuer": issuer,
        "oidc_client_id": CLIENT_ID,
        "oidc_client_secret": CLIENT_SECRET,
        "oidc_display_name": "Test IdP",
        "oidc_scopes": "openid email groups",
        **overrides,
    }


@asynccontextmanager
async def browser(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app in its lifespan, and a browser: the app in process, 127.0.0.1 over the network."""
    app = create_app(settings)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url=BASE,
            mounts={"http://127.0.0.1": httpx.AsyncHTTPTransport()},
        ) as client:
            yield app, client


@pytest.fixture
async def sso(
    tmp_path: Path, database_url: str, engine: AsyncEngine, provider: OpenIdProvider
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = make_settings(tmp_path, database_url, **sso_settings(provider.url))
    async with browser(settings) as pair:
        yield pair


def state_of(app: FastAPI) -> AppState:
    state: AppState = app.state.modelyard
    return state


async def walk_to_callback(
    client: httpx.AsyncClient, start: str, *, tamper: dict[str, str] | None = None
) -> str:
    """Follow a sign-in from `start` through the provider's pages up to (not into) this app's
    callback, and return the callback URL; `tamper` rewrites the provider's authorize request."""
    answer = await client.get(start)
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    if tamper:
        parts = urlsplit(location)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()} | tamper
        location = urlunsplit(parts._replace(query=urlencode(query)))
    return await follow_to_callback(client, location)


async def follow_to_callback(client: httpx.AsyncClient, location: str) -> str:
    """Follow the provider's redirects from `location` until one goes to the test callback."""
    for _ in range(10):
        if location.startswith(TEST_CALLBACK):
            return location
        answer = await client.get(location)
        assert answer.is_redirect, (answer.status_code, answer.text[:500])
        location = str(answer.next_request.url) if answer.next_request else ""
    raise AssertionError("the provider never sent the browser back")


async def count(db: AsyncSession, table: type[SsoIdentity] | type[User]) -> int:
    return int(await db.scalar(select(func.count()).select_from(table)) or 0)


def session_cookie(client: httpx.AsyncClient) -> str | None:
    return client.cookies.get("modelyard_session")


# --- the dashboard ------------------------------------------------------------------------------


async def test_sign_in_page_offers_sso_and_a_first_sign_in_creates_the_account(
    sso: tuple[FastAPI, httpx.AsyncClient], provider: OpenIdProvider, db: AsyncSession
) -> None:
    _, client = sso
    person = new_person(groups=("ml-team", "oncall"))
    provider.signs_in(person)

    page = await client.get("/sign-in?next=/account")
    link = re.search(r'id="sso-sign-in" class="button" href="([^"]+)"', page.text)
    assert link is not None
    assert "Sign in with Test IdP" in page.text
    answer = await client.get(link.group(1).replace("&amp;", "&"), follow_redirects=True)

    assert answer.status_code == 200, answer.text[:500]
    assert str(answer.url) == f"{BASE}/account"
    assert person.email in answer.text
    identity = (await db.execute(select(SsoIdentity))).scalar_one()
    user = await db.get(User, identity.user_id)
    assert user is not None
    assert user.email == person.email
    assert (identity.issuer, identity.subject) == (provider.url, person.sub)
    assert identity.groups == ["ml-team", "oncall"]
    # The account has no password: none signs in to it.
    login = await client.post(
        "/api/v1/auth/login", json={"email": person.email, "password": "!sso"}
    )
    assert login.status_code == 401


async def test_a_second_sign_in_reaches_the_same_account(
    sso: tuple[FastAPI, httpx.AsyncClient], provider: OpenIdProvider, db: AsyncSession
) -> None:
    _app, client = sso
    person = new_person()
    provider.signs_in(person)
    first = await client.get("/auth/sso/start", follow_redirects=True)
    assert first.status_code == 200
    client.cookies.clear()
    provider.signs_in(Person(person.sub, person.email, groups=("new-group",)))
    second = await client.get("/auth/sso/start", follow_redirects=True)

    assert second.status_code == 200
    assert session_cookie(client)
    assert (await count(db, User), await count(db, SsoIdentity)) == (1, 1)
    assert (await db.execute(select(SsoIdentity))).scalar_one().groups == ["new-group"]


async def test_a_callback_with_another_state_is_refused(
    sso: tuple[FastAPI, httpx.AsyncClient], provider: OpenIdProvider, db: AsyncSession
) -> None:
    _, client = sso
    provider.signs_in(new_person())
    callback = await walk_to_callback(client, "/auth/sso/start")
    parts = urlsplit(callback)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | {"state": "forged-state"}

    answer = await client.get(urlunsplit(parts._replace(query=urlencode(query))))

    assert answer.status_code == 400
    assert "does not match the one started in this browser" in answer.text
    assert session_cookie(client) is None
    assert await count(db, User) == 0


async def test_a_callback_without_the_browser_that_started_it_is_refused(
    sso: tuple[FastAPI, httpx.AsyncClient], provider: OpenIdProvider, db: AsyncSession
) -> None:
    _, client = sso
    provider.signs_in(new_person())
    callback = await walk_to_callback(client, "/auth/sso/start")
    # A victim's browser lured to the attacker's callback URL has no flow cookie.
    client.cookies.delete("modelyard_sso")

    answer = await client.get(callback)

    assert answer.status_code == 400
    assert "not started in this browser" in answer.text
    assert await count(db, User) == 0


async def test_an_id_token_with_another_nonce_is_refused(
    sso: tuple[FastAPI, httpx.AsyncClient], provider: OpenIdProvider, db: AsyncSession
) -> None:
    _, client = sso
    provider.signs_in(new_person())
    callback = await walk_to_callback(
        client, "/auth/sso/start", tamper={"nonce": "replayed-nonce-from-elsewhere"}
    )

    answer = await client.get(callback)

    assert answer.status_code == 400
    assert "does not belong to this sign-in" in answer.text
    assert session_cookie(client) is None
    assert await count(db, User) == 0


async def test_a_spent_code_is_refused(
    sso: tuple[FastAPI, httpx.AsyncClient], provider: OpenIdProvider, db: AsyncSession
) -> None:
    _, client = sso
    provider.signs_in(new_person())
    callback = await walk_to_callback(client, "/auth/sso/start")
    flow = client.cookies.get("modelyard_sso")
    assert flow is not None
    first = await client.get(callback)
    assert first.status_code == 303
    assert session_cookie(client)
    client.cookies.clear()

    # Replayed with everything it had: the flow cookie, the state, the code.
    again = await client.get(callback, headers={"Cookie": f"modelyard_sso={flow}"})

    assert again.status_code == 400
    assert "refused the sign-in code" in again.text
    assert session_cookie(client) is None
    assert await count(db, User) == 1


async def test_an_id_token_for_another_audience_is_refused(
    sso: tuple[FastAPI, httpx.AsyncClient], provider: OpenIdProvider
) -> None:
    """A genuine ID token of the same provider, issued to another application."""
    app, client = sso
    provider.signs_in(new_person())
    verifier, challenge = new_pkce_pair()
    query = urlencode(
        {
            "response_type": "code",
            "client_id": OTHER_CLIENT_ID,
            "redirect_uri": TEST_CALLBACK,
            "scope": "openid email",
            "state": "some-state-of-the-other-app",
            "nonce": "nonce-of-the-other-app",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    location = await follow_to_callback(client, f"{provider.url}/auth?{query}")
    code = parse_qs(urlsplit(location).query)["code"][0]
    tokens = await client.post(
        f"{provider.url}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": TEST_CALLBACK,
            "code_verifier": verifier,
        },
        auth=(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET),
    )
    id_token = tokens.json()["id_token"]
    assert jwt.decode(id_token, options={"verify_signature": False})["aud"] == OTHER_CLIENT_ID
    oidc = state_of(app).oidc
    assert oidc is not None

    with pytest.raises(SsoFailed, match="issued for another application"):
        await oidc.verify_id_token(id_token, nonce="nonce-of-the-other-app")


@pytest.mark.parametrize("algorithm", ["HS256", "none"])
async def test_an_id_token_signed_with_the_client_secret_or_unsigned_is_refused(
    sso: tuple[FastAPI, httpx.AsyncClient], provider: OpenIdProvider, algorithm: str
) -> None:
    app, _ = sso
    now = int(time.time())
    claims = {
        "iss": provider.url,
        "aud": CLIENT_ID,
        "sub": "forged",
        "email": "victim@example.com",
        "nonce": "n" * 32,
        "iat": now,
        "exp": now + 300,
    }
    # `none` takes no key: PyJWT wants an empty one.
    forged = jwt.encode(claims, CLIENT_SECRET if algorithm == "HS256" else "", algorithm=algorithm)
    oidc = state_of(app).oidc
    assert oidc is not None

    with pytest.raises(SsoFailed, match="not signed with an allowed algorithm"):
        await oidc.verify_id_token(forged, nonce="n" * 32)


async def test_an_existing_local_account_is_not_taken_over(
    sso: tuple[FastAPI, httpx.AsyncClient], provider: OpenIdProvider, db: AsyncSession
) -> None:
    _, client = sso
    local = await make_account(client)
    provider.signs_in(new_person(email=local.email))

    answer = await client.get("/auth/sso/start", follow_redirects=True)

    assert answer.status_code == 403
    assert "an account with this email already exists" in answer.text
    assert session_cookie(client) is None
    assert await count(db, SsoIdentity) == 0


async def test_linking_a_verified_email_when_allowed(
    tmp_path: Path,
    database_url: str,
    engine: AsyncEngine,
    provider: OpenIdProvider,
    db: AsyncSession,
) -> None:
    settings = make_settings(
        tmp_path, database_url, **sso_settings(provider.url, oidc_link_verified_email=True)
    )
    async with browser(settings) as (_, client):
        local = await make_account(client)
        provider.signs_in(new_person(email=local.email, email_verified=False))
        unverified = await client.get("/auth/sso/start", follow_redirects=True)
        client.cookies.clear()  # signed out at the provider too
        provider.signs_in(new_person(email=local.email))
        verified = await client.get("/auth/sso/start", follow_redirects=True)

    assert unverified.status_code == 403
    assert "not verified" in unverified.text
    assert verified.status_code == 200
    identity = (await db.execute(select(SsoIdentity))).scalar_one()
    assert str(identity.user_id) == local.id
    assert await count(db, User) == 1


async def test_a_provider_that_is_down_gives_a_clear_page(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    issuer = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = make_settings(tmp_path, database_url, **sso_settings(issuer))
    async with browser(settings) as (_, client):
        answer = await client.get("/auth/sso/start")

    assert answer.status_code == 502
    assert "the identity provider cannot be reached" in answer.text
    assert "Traceback" not in answer.text
    assert issuer not in answer.text
    assert "modelyard_sso" not in answer.cookies


# --- passwords off ------------------------------------------------------------------------------


async def test_passwords_off_leaves_only_single_sign_on(
    tmp_path: Path, database_url: str, engine: AsyncEngine, provider: OpenIdProvider
) -> None:
    settings = make_settings(
        tmp_path, database_url, **sso_settings(provider.url, local_passwords=False)
    )
    credentials = {"email": "someone@example.com", "password": "a-long-password"}
    async with browser(settings) as (_, client):
        register = await client.post("/api/v1/auth/register", json=credentials)
        login = await client.post("/api/v1/auth/login", json=credentials)
        page = await client.get("/sign-in")
        info = await client.get("/api/v1/auth/sso")
        provider.signs_in(new_person())
        signed_in = await client.get("/auth/sso/start", follow_redirects=True)

    for refused in (register, login):
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/passwords-disabled")
    assert "Sign in with Test IdP" in page.text
    assert 'name="password"' not in page.text
    assert info.json() == {
        "enabled": True,
        "name": "Test IdP",
        "start_path": "/auth/sso/start",
        "local_passwords": False,
    }
    assert signed_in.status_code == 200


def test_passwords_off_without_single_sign_on_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nobody could sign in"):
        Settings(_env_file=None, data_dir=tmp_path, local_passwords=False)


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def live(
    tmp_path: Path, dialect: str, database_url: str, engine: AsyncEngine, provider: OpenIdProvider
) -> Iterator[str]:
    """The app served over HTTP on the port the provider knows, for the command line's client
    (uvicorn in a thread: the client is synchronous)."""
    port = provider.live_ports[0 if dialect == "sqlite" else 1]
    settings = make_settings(tmp_path, database_url, **sso_settings(provider.url))
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        # Polling a flag, not timing: the loop ends when the server has bound its socket.
        tick = threading.Event()
        while not server.started and thread.is_alive():
            tick.wait(0.01)
        assert server.started, "the test server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def browse_in_thread(url: str) -> None:
    """A browser the person drives: follows every redirect, as a browser does, in a thread
    (the command line waits on its loopback address meanwhile)."""

    def go() -> None:
        with httpx.Client(follow_redirects=True) as web:
            web.get(url)

    threading.Thread(target=go, daemon=True).start()


def test_cli_sign_in_hands_a_one_time_code_to_the_loopback(
    live: str, provider: OpenIdProvider
) -> None:
    person = new_person()
    provider.signs_in(person)

    code, verifier = browser_sign_in(live, open_browser=browse_in_thread, timeout_seconds=60)
    with Client(live) as client:
        client.login_sso(code, verifier)
        me = client.me()
        key = client.create_api_key("cli", scopes=["read"])
    with httpx.Client(base_url=live) as http:
        replayed = http.post(
            "/api/v1/auth/sso/token", json={"code": code, "code_verifier": verifier}
        )

    assert me.email == person.email
    assert key.key.startswith("myd_")
    assert replayed.status_code == 401
    assert replayed.headers["content-type"] == "application/problem+json"


def test_a_refused_cli_sign_in_tells_the_command_line_why(
    live: str, provider: OpenIdProvider
) -> None:
    person = new_person()
    with httpx.Client(base_url=live) as http:
        body = {"email": person.email, "password": "a-long-password"}
        assert http.post("/api/v1/auth/register", json=body).status_code == 201
    provider.signs_in(person)

    with pytest.raises(SsoLoginFailed, match="an account with this email already exists"):
        browser_sign_in(live, open_browser=browse_in_thread, timeout_seconds=60)


def test_login_sso_command_stores_an_api_key_of_the_signed_in_person(
    live: str, provider: OpenIdProvider, tmp_path: Path
) -> None:
    person = new_person()
    provider.signs_in(person)
    browser = f"{sys.executable} {Path(__file__).parent / 'browser.py'} %s"
    config = tmp_path / "config" / "credentials.json"

    result = CliRunner().invoke(
        make_app(),
        ["login", "--sso", "--url", live, "--json"],
        env={"BROWSER": browser, "MODELYARD_CLIENT_CONFIG": str(config)},
        prog_name="modelyard",
    )

    assert result.exit_code == 0, result.output
    stored = json.loads(config.read_text())
    with Client(live, api_key=stored["api_key"]) as client:
        assert client.me().email == person.email


async def test_a_handoff_code_needs_its_verifier_and_works_once(
    sso: tuple[FastAPI, httpx.AsyncClient], provider: OpenIdProvider, db: AsyncSession
) -> None:
    _, client = sso
    provider.signs_in(new_person())
    verifier, challenge = new_pkce_pair()
    start = "/auth/sso/start?" + urlencode(
        {
            "cli_redirect": "http://127.0.0.1:9/callback",
            "cli_state": "state-of-the-command-line",
            "cli_challenge": challenge,
        }
    )
    callback = await walk_to_callback(client, start)
    answer = await client.get(callback)
    assert answer.status_code == 303
    handed = urlsplit(answer.headers["location"])
    assert (handed.hostname, handed.port, handed.path) == ("127.0.0.1", 9, "/callback")
    query = parse_qs(handed.query)
    assert query["state"] == ["state-of-the-command-line"]
    code = query["code"][0]
    assert session_cookie(client) is None  # the browser itself is not signed in

    stolen = await client.post(
        "/api/v1/auth/sso/token", json={"code": code, "code_verifier": new_pkce_pair()[0]}
    )
    after_a_wrong_verifier = await client.post(
        "/api/v1/auth/sso/token", json={"code": code, "code_verifier": verifier}
    )

    assert stolen.status_code == 401
    assert after_a_wrong_verifier.status_code == 401  # one try: the code is spent
    assert (await db.execute(select(SsoHandoff))).scalar_one().used_at is not None


@pytest.mark.parametrize(
    "redirect",
    [
        "http://evil.example.com:8000/callback",
        "https://127.0.0.1:8000/callback",
        "http://127.0.0.1/callback",
        "http://user@127.0.0.1:8000/callback",
        "http://localhost:8000/callback",
    ],
)
async def test_the_cli_redirect_must_be_a_loopback_address(
    sso: tuple[FastAPI, httpx.AsyncClient], redirect: str
) -> None:
    _, client = sso
    query = urlencode(
        {"cli_redirect": redirect, "cli_state": "s" * 20, "cli_challenge": new_pkce_pair()[1]}
    )

    answer = await client.get(f"/auth/sso/start?{query}")

    assert answer.status_code == 400
    assert "loopback" in answer.text
