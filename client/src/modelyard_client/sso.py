"""Single sign-on from the command line: a browser signs in at the server, which hands a
one-time code to a loopback address on this machine (RFC 8252), spent once with a PKCE verifier.

The provider's client secret stays on the server; the CLI only learns a code that is useless
without the verifier it never sent anywhere, and that expires within minutes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from modelyard_client.errors import ModelyardClientError

CALLBACK_PATH = "/callback"
DEFAULT_TIMEOUT_SECONDS = 300.0
PAGE = (
    b"<!doctype html><meta charset=utf-8><title>Modelyard</title>"
    b"<p>%s You can close this tab and return to the terminal.</p>"
)


class SsoLoginFailed(ModelyardClientError):
    """The browser sign-in did not come back with a code for this login."""


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _Receiver(HTTPServer):
    """Waits on 127.0.0.1 for the one redirect that carries the code."""

    def __init__(self, expected_state: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.expected_state = expected_state
        self.code: str | None = None
        self.failure: str | None = None
        self.done = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != CALLBACK_PATH or self.server.done.is_set():
            self.send_error(404)
            return
        query = parse_qs(parts.query)
        state = query.get("state", [""])[0]
        code = query.get("code", [""])[0]
        error = query.get("error_description", query.get("error", [""]))[0]
        # Another page on this machine could send the browser here: only our state counts.
        if not hmac.compare_digest(state.encode(), self.server.expected_state.encode()):
            self.server.failure = "the sign-in came back without this login's state"
            message = b"Sign-in failed."
        elif not code:
            self.server.failure = f"the sign-in failed: {error[:300] or 'no code came back'}"
            message = b"Sign-in failed; the terminal says why."
        else:
            self.server.code = code
            message = b"Signed in."
        self.server.done.set()
        body = PAGE % message
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the terminal shows our messages, not an access log


def browser_sign_in(
    url: str,
    *,
    open_browser: Callable[[str], object],
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> tuple[str, str]:
    """Send a browser through the server's single sign-on and return the one-time code and the
    PKCE verifier to spend it with (`Client.login_sso`).

    `open_browser` gets the URL to open (webbrowser.open, or a message to the person).

    Raises:
        SsoLoginFailed: no code came back in time, or one for another login.
    """
    verifier = secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(24)
    receiver = _Receiver(state)
    try:
        port = receiver.server_address[1]
        query = urlencode(
            {
                "cli_redirect": f"http://127.0.0.1:{port}{CALLBACK_PATH}",
                "cli_state": state,
                "cli_challenge": _challenge(verifier),
            }
        )
        open_browser(f"{url.rstrip('/')}/auth/sso/start?{query}")
        deadline = time.monotonic() + timeout_seconds
        receiver.timeout = 1.0
        while not receiver.done.is_set():
            if time.monotonic() >= deadline:
                raise SsoLoginFailed("no sign-in came back from the browser in time")
            receiver.handle_request()
    finally:
        receiver.server_close()
    if receiver.code is None:
        raise SsoLoginFailed(receiver.failure or "the sign-in failed")
    return receiver.code, verifier
