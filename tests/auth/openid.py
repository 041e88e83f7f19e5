"""A real OpenID provider for the tests: panva's `oidc-provider` from npm, run by Node on
127.0.0.1 (tests/auth/oidc/provider.mjs). Its packages are installed with `npm ci` when missing;
without Node and npm the tests skip, and fail in CI."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.services import service_missing

HERE = Path(__file__).parent / "oidc"
CLIENT_ID = "modelyard"
CLIENT_SECRET = "modelyard-test-client-secret-at-least-32-bytes"
OTHER_CLIENT_ID = "other-app"
OTHER_CLIENT_SECRET = "other-secret"
TEST_CALLBACK = "http://testserver/auth/sso/callback"
NPM_TIMEOUT_SECONDS = 600
STOP_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Person:
    sub: str
    email: str
    email_verified: bool = True
    groups: tuple[str, ...] = ()


@dataclass
class OpenIdProvider:
    url: str
    # Ports for live servers, registered as redirect URIs (`http://127.0.0.1:PORT/...`).
    live_ports: tuple[int, ...]

    def signs_in(self, person: Person) -> None:
        """Make `person` the one who signs in at the provider's login form next."""
        body = {
            "sub": person.sub,
            "email": person.email,
            "email_verified": person.email_verified,
            "groups": list(person.groups),
        }
        httpx.post(f"{self.url}/test/account", json=body).raise_for_status()


def new_person(**overrides: object) -> Person:
    tag = uuid.uuid4().hex[:10]
    values: dict[str, object] = {"sub": f"sub-{tag}", "email": f"sso-{tag}@example.com"}
    values.update(overrides)
    return Person(**values)  # type: ignore[arg-type]


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        service_missing("Node.js and npm", "PATH", FileNotFoundError("node or npm"))
    assert node is not None
    assert npm is not None
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(  # noqa: S603 - fixed arguments
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=HERE,
            check=True,
            timeout=NPM_TIMEOUT_SECONDS,
            capture_output=True,
        )
    return node, npm


@contextmanager
def running_provider(log: Path, live_ports: tuple[int, ...]) -> Iterator[OpenIdProvider]:
    """Run the provider until the block ends; `log` gets its stderr."""
    node, _ = _tools()
    redirects = [TEST_CALLBACK, *(f"http://127.0.0.1:{p}/auth/sso/callback" for p in live_ports)]
    with log.open("w") as errors:
        process = subprocess.Popen(  # noqa: S603 - fixed arguments
            [node, "provider.mjs", ",".join(redirects)],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    try:
        assert process.stdout is not None
        # The provider's first line; EOF (an empty line) if it died.
        line = process.stdout.readline().strip()
        if not line.startswith("listening "):
            raise RuntimeError(f"the OpenID provider did not start: {log.read_text()[-2000:]}")
        yield OpenIdProvider(url=line.removeprefix("listening "), live_ports=live_ports)
    finally:
        if process.stdout is not None:
            process.stdout.close()
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
